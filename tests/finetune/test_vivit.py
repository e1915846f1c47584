import itertools

import pytest
import torch

from finetune.models import layer_decay_scale
from finetune.vivit import T2TEmbed, ViViT, VivitConfig


def tiny(**kw):
    base = dict(preset="vit_tiny", img_size=32, patch_size=8, num_frames=8, tubelet_size=2,
                num_classes=5, temporal_depth=2, temporal_init="copy")
    base.update(kw)
    return ViViT(VivitConfig(**base))


@pytest.mark.parametrize("variant,tokenizer", list(itertools.product([1, 2, 3, 4],
                                                                     ["tubelet", "uniform", "t2t"])))
def test_every_model_and_tokeniser_trains(variant, tokenizer):
    torch.manual_seed(0)
    m = tiny(variant=variant, tokenizer=tokenizer)
    x = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    logits = m(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_token_grids_agree_across_tokenisers():
    x = torch.randn(1, 3, 16, 64, 64)
    for tok in ("tubelet", "uniform", "t2t"):
        m = ViViT(VivitConfig(tokenizer=tok, preset="vit_tiny", img_size=64, num_frames=16,
                              num_classes=2))
        assert m.patch_embed(x).shape == (1, 8 * 4 * 4, 96), tok


def test_t2t_on_28_cubed_volumes_gives_343_tokens_with_the_reference_schedule():
    m = ViViT(VivitConfig(tokenizer="t2t", preset="vit_tiny", img_size=28, patch_size=4,
                          num_frames=28, tubelet_size=4, in_chans=1, num_classes=11))
    assert m.cfg.t2t_kernels == (((3, 3, 3), (2, 2, 2), (1, 1, 1)),) * 2
    assert m.patch_embed(torch.randn(2, 1, 28, 28, 28)).shape == (2, 343, 96)
    tokens, grid = T2TEmbed.soft_split(torch.randn(1, 2, 28, 28, 28), (3, 3, 3), (2, 2, 2),
                                       (1, 1, 1))
    assert grid == (14, 14, 14) and tokens.shape == (1, 14 ** 3, 2 * 27)


def test_model_4_has_model_1_parameters_and_splits_heads():
    a, b = tiny(variant=1), tiny(variant=4)
    assert {k: v.shape for k, v in a.state_dict().items()} == \
        {k: v.shape for k, v in b.state_dict().items()}
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 256, (1, 3, 8, 32, 32), dtype=torch.uint8)
    assert not torch.allclose(a.eval()(x), b.eval()(x))  # same weights, factorised attention


def test_model_4_attends_within_frames_and_positions_only():
    m = tiny(variant=4).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    tokens = m.tokens(x)
    attn = m.blocks[0].attn
    base = attn(tokens)
    t, h, w = m.cfg.grid
    # perturb a token at (t=0, h=0, w=0); only tokens sharing its frame or position change
    bumped = tokens.clone()
    bumped[0, 0] += 1.0
    changed = (attn(bumped) - base).abs().sum(-1)[0] > 1e-6
    grid = changed.view(t, h, w)
    related = torch.zeros(t, h, w, dtype=torch.bool)
    related[0] = True
    related[:, 0, 0] = True
    assert torch.equal(grid, related)


def test_cls_pooling_where_it_is_defined():
    for v in (1, 2):
        assert tiny(variant=v, pool="cls")(torch.zeros(1, 3, 8, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="pool=cls is for models 1 and 2"):
        tiny(variant=3, pool="cls")


def test_layer_decay_scales_from_embeddings_to_head():
    m = tiny(variant=2)
    scale = layer_decay_scale(m, 0.5)
    n = m.cfg.depth + m.cfg.temporal_depth
    assert scale("head.weight") == 1.0
    assert scale("patch_embed.proj.weight") == 0.5 ** (n + 1)
    assert scale("blocks.0.attn.qkv.weight") == 0.5 ** n
    assert scale("temporal_blocks.1.mlp.fc1.weight") == 0.5 ** (n - m.cfg.depth - 1)
