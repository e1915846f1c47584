import torch


def sincos_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sine-cosine table (num_positions, dim) over flattened token positions, the table
    of the published VideoMAE weights: angle(pos, j) = pos / 10000^(2*(j//2)/dim), sine on even
    j, cosine on odd j. A buffer, never a parameter, so any token grid gets its own table."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def table_for(stored: torch.Tensor, n: int) -> torch.Tensor:
    """(1, n, D): ``stored`` (1, N, D) when n == N, else the table built for n positions (a clip
    with another token count)."""
    if n == stored.shape[1]:
        return stored
    return sincos_table(n, stored.shape[2])[None].to(stored.device)

