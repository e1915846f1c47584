import pytest
import torch
from einops import rearrange

from data.masks import make_mask, num_hidden, random_mask, tube_mask


def test_count_rule_of_the_published_recipe():
    assert num_hidden(196, 0.9) == 176
    assert num_hidden(196, 0.75) == 147
    assert num_hidden(16, 0.9) == 14
    with pytest.raises(ValueError):
        num_hidden(196, 1.0)


def test_tube_mask_hides_the_same_cells_at_every_time_step():
    g = torch.Generator().manual_seed(0)
    m = tube_mask(5, (8, 14, 14), 0.9, g)
    assert m.shape == (5, 1568) and m.dtype == torch.bool
    assert m.sum(1).tolist() == [8 * 176] * 5
    grid = rearrange(m, "b (t h w) -> b t h w", t=8, h=14, w=14)
    assert torch.equal(grid, grid[:, :1].expand_as(grid))  # one spatial mask per sample
    assert (m.shape[1] - m.sum(1) == 160).all()          # 160 visible tokens, as published
    assert not torch.equal(grid[0, 0], grid[1, 0])       # samples get different masks


def test_token_order_is_t_major():
    # cell (h, w) hidden at t=0 must be hidden at index t*H'*W' + h*W' + w for every t
    m = tube_mask(1, (4, 3, 5), 0.5, torch.Generator().manual_seed(1))[0]
    cells = m[:15]
    for t in range(4):
        assert torch.equal(m[t * 15:(t + 1) * 15], cells)


def test_random_mask_counts_and_independence_over_time():
    m = random_mask(4, (8, 14, 14), 0.9, torch.Generator().manual_seed(0))
    assert m.sum(1).tolist() == [int(0.9 * 1568)] * 4
    grid = rearrange(m, "b (t s) -> b t s", t=8)
    assert not torch.equal(grid[:, 0], grid[:, 1])


def test_masks_are_reproducible_from_the_generator_and_kind_is_checked():
    a = make_mask("tube", 2, (2, 4, 4), 0.75, torch.Generator().manual_seed(3))
    b = make_mask("tube", 2, (2, 4, 4), 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_mask("running", 2, (2, 4, 4), 0.75)
