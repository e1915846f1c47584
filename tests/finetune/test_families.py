"""The registry of fine-tuning families: one test over every family and preset (timm's habit),
and a family added in one place is trained, probed and described by the existing machinery."""
import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune import models
from finetune.uniformer import UNIFORMER_PRESETS
from finetune.vivit import TOKENIZERS, VARIANTS, ViViT, VivitConfig
from pretrain.model import PRESETS

GEOMETRY = dict(img_size=32, patch_size=16, num_frames=4, tubelet_size=2, num_classes=3,
                drop_path=0.0)
PRESETS_OF = {"vivit": sorted(PRESETS), "uniformer_head": sorted(PRESETS),
              "uniformer": sorted(UNIFORMER_PRESETS)}
# Large presets run the same code at larger widths (~90 s of CPU for these two): they are
# checked against the published sizes, one block built at full width, instead.
LARGE = {"vit_l": (1024, 24, 16, 302), "vit_h": (1280, 32, 16, 630)}   # width, depth, heads,
# millions of parameters in the blocks (the published 304M / 632M count the embeddings too)
CASES = [(family, preset, {}) for family in models.FAMILIES for preset in PRESETS_OF[family]
         if preset not in LARGE]
CASES += [("vivit", "vit_tiny", {"variant": v, "tokenizer": t}) for v in VARIANTS
          for t in TOKENIZERS if (v, t) != (1, "tubelet")]
CASES += [("vivit", "vit_tiny", {"pool": "cls"}), ("vivit", "vit_tiny", {"head_norm": "batch"})]


def test_every_family_is_in_the_presets_table():
    assert set(PRESETS_OF) == set(models.FAMILIES)


@pytest.mark.slow
@pytest.mark.parametrize("family,preset,extra", CASES,
                         ids=[f"{f}-{p}-{'-'.join(f'{k}{v}' for k, v in e.items()) or 'default'}"
                              for f, p, e in CASES])
def test_every_family_and_preset_runs_learns_pools_and_round_trips(family, preset, extra,
                                                                    tmp_path):
    cfg = VivitConfig(family=family, preset=preset, **GEOMETRY, **extra)
    torch.manual_seed(0)
    model = models.build_model(cfg)
    assert type(model) is models.FAMILIES[family] and model.family == family
    x = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        # the pooled feature is exactly what the head part takes (what the probe fits on)
        pooled = model.pooled(x)
        assert pooled.ndim == 2 and pooled.shape[0] == 2
        assert torch.equal(model.classify(pooled), logits)
    # every parameter takes part: a gradient, finite, for each
    model.train()
    model(x).float().logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.head.weight.grad.abs().sum() > 0
    # layer-wise lr decay: embeddings at the bottom, the head at the top, all within range
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert all(0 <= i <= model.num_layers + 1 for i in ids.values())
    assert ids["head.weight"] == model.num_layers + 1 and min(ids.values()) == 0
    scale = models.layer_decay_scale(model, 0.5)
    assert scale("head.weight") == 1.0
    # what the fine-tuning log prints: every depth once, bottom to top, with its lr scale
    said = models.describe_layer_decay(model, 0.5)
    depths = [int(p.split(" depth ")[1].split(" ")[0]) for p in said.split("), ")]
    assert depths == sorted(set(ids.values())) and said.startswith(
        f"x{0.5 ** (model.num_layers + 1):.3g} depth 0") and "x1 depth" in said
    assert models.describe(model).endswith("M parameters")
    # a save/load round trip through safetensors gives the same model
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    torch.manual_seed(1)
    again = models.build_model(cfg)
    again.load_state_dict(load_file(path), strict=True)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("family", ["vivit", "uniformer_head"])
@pytest.mark.parametrize("preset", sorted(LARGE))
def test_large_presets_resolve_to_the_published_sizes(family, preset):
    cfg = VivitConfig(family=family, preset=preset, **GEOMETRY).resolved()
    width, depth, heads, millions = LARGE[preset]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (width, depth, heads)
    one = models.build_model(dataclasses.replace(cfg, family="vivit", depth=1))  # one block
    block = sum(p.numel() for n, p in one.named_parameters() if n.startswith("blocks.0."))
    assert round(block * depth / 1e6) == millions


def test_an_unknown_family_is_one_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="model.family must be one of vivit, uniformer, "
                                         "uniformer_head, not 'vivvit'"):
        models.build_model(VivitConfig(family="vivvit", **GEOMETRY))


class MeanFrameNet(ViViT):
    """A family defined in one place: ViViT's tokens, averaged, then a linear head. Nothing
    else in the package names it."""
    family = "mean_frame"

    def describe(self) -> str:
        return "a mean-frame toy"


def test_a_new_family_is_one_class_and_one_registry_entry(ft_recipe, monkeypatch, capsys):
    """Registered in the table alone, a family is built, described, trained and tested by the
    fine-tuning loop, and probed, with no other file changed."""
    from finetune.probe import extract
    from finetune.train import FinetuneConfig, train
    from pretrain.config import load_config
    monkeypatch.setitem(models.FAMILIES, MeanFrameNet.family, MeanFrameNet)
    recipe, _ = ft_recipe
    cfg = load_config(recipe, ["model.family=mean_frame", "train.epochs=1"],
                      schema=FinetuneConfig)
    report = train(cfg)
    assert "a mean-frame toy" in capsys.readouterr().err
    assert report["test"]["samples"] == 9 and report["model"]["family"] == "mean_frame"
    model = models.build_model(dataclasses.replace(cfg.model, num_classes=4))
    feats, labels = extract(model, cfg.data, "val", torch.device("cpu"))
    assert feats.shape == (len(labels), model.cfg.embed_dim)


def test_a_family_without_the_whole_interface_is_refused_when_built(monkeypatch):
    from finetune.classifier import ClipClassifier

    class Half(ClipClassifier):
        family = "half"
        resolve_config = staticmethod(ViViT.resolve_config)

        def __init__(self, cfg):
            super().__init__()

        def pooled(self, x):
            return x.flatten(1)
    monkeypatch.setitem(models.FAMILIES, "half", Half)
    with pytest.raises(TypeError, match="abstract .*classify.*describe"):
        models.build_model(VivitConfig(family="half", **GEOMETRY))


@pytest.mark.parametrize("family", list(models.FAMILIES))
def test_token_features_come_from_the_families_with_a_token_grid_and_no_other(family):
    """``finetune.features --tokens``: (B, N, D) tokens from a family whose class says it has
    them; a one-line refusal from the others (UniFormer's features are a 5-D map)."""
    from finetune.features import token_features
    preset = PRESETS_OF[family][0]
    model = models.build_model(VivitConfig(family=family, preset=preset, **GEOMETRY)).eval()
    clip = torch.randint(0, 255, (1, 3, 4, 32, 32), dtype=torch.uint8)
    if models.family_class(family).token_grid:
        with torch.no_grad():
            assert token_features(model)(clip).ndim == 3
    else:
        with pytest.raises(ValueError, match="has none"):
            token_features(model)
