import math

import torch

from pretrain.layers import Attention, DropPath, TubeletEmbed, sincos_table


def test_sincos_table_matches_the_published_formula():
    table = sincos_table(10, 8)
    for pos in (0, 3, 9):
        for j in range(8):
            angle = pos / 10000 ** (2 * (j // 2) / 8)
            want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert abs(table[pos, j].item() - want) < 1e-6


def test_tubelet_tokens_are_t_major():
    emb = TubeletEmbed(1, 4, tubelet=2, patch=2)
    x = torch.randn(1, 1, 4, 6, 8)
    tokens = emb(x)
    assert tokens.shape == (1, 2 * 3 * 4, 4)
    conv = emb.proj(x)  # (1, D, 2, 3, 4)
    assert torch.equal(tokens[0, 1 * 12 + 2 * 4 + 3], conv[0, :, 1, 2, 3])


def test_attention_equals_the_written_out_formula_with_zero_key_bias():
    torch.manual_seed(0)
    attn = Attention(8, 2)
    torch.nn.init.normal_(attn.q_bias)
    torch.nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 5, 8)
    w = attn.qkv.weight
    q = x @ w[:8].T + attn.q_bias
    k = x @ w[8:16].T
    v = x @ w[16:].T + attn.v_bias
    heads = lambda t: t.view(2, 5, 2, 4).transpose(1, 2)
    a = (heads(q) @ heads(k).transpose(-1, -2) / 2.0).softmax(-1) @ heads(v)
    want = attn.proj(a.transpose(1, 2).reshape(2, 5, 8))
    assert torch.allclose(attn(x), want, atol=1e-6)


def test_drop_path_is_identity_in_eval_and_keeps_the_mean():
    dp = DropPath(0.5)
    x = torch.ones(4000, 3)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert abs(y.mean().item() - 1.0) < 0.1
