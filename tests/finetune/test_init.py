
import pytest
import torch
from safetensors.torch import save_file

from data.masks import token_ids, tube_mask
from finetune.init import init_from
from finetune.vivit import ViViT, VivitConfig
from pretrain.export import export_encoder, export_hf
from pretrain.model import ModelConfig, VideoMAE

GEOM = dict(preset="vit_tiny", img_size=32, patch_size=8, num_frames=8, tubelet_size=2)


@pytest.fixture(scope="module")
def videomae(tmp_path_factory):
    torch.manual_seed(0)
    m = VideoMAE(ModelConfig(**GEOM)).eval()
    for p in m.parameters():  # non-trivial norms and biases
        torch.nn.init.normal_(p, std=0.05) if p.ndim == 1 else None
    out = tmp_path_factory.mktemp("enc")
    export_encoder(m.state_dict(), m.cfg, str(out), {"test": True})
    return m, str(out)


def vivit(**kw):
    return ViViT(VivitConfig(**GEOM, num_classes=3, **kw)).eval()


def test_model_1_from_our_encoder_reproduces_its_features_exactly(videomae, capsys):
    m, path = videomae
    v = vivit(variant=1)
    report = init_from(v, path)
    assert report["unused"] == [] and report["mismatched"] == []
    assert set(report["new"]) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "loaded" in capsys.readouterr().out
    x = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        want = m.encoder(m.normalize(x)[0])
        got = v.forward_features(x)
    assert torch.equal(got, want)
    # the encoder also reproduces its masked forward: visible tokens only
    mask = tube_mask(2, m.cfg.grid, 0.75)
    with torch.no_grad():
        vis = m.encoder(m.normalize(x)[0], token_ids(mask)[0])
    assert vis.shape[1] == int((~mask[0]).sum())


def test_model_1_from_official_and_hf_checkpoints(videomae, tmp_path):
    m, _ = videomae
    torch.save({"model": m.state_dict()}, tmp_path / "official.pth")
    export_hf(m.state_dict(), m.cfg, str(tmp_path / "hf"))
    x = torch.randint(0, 256, (1, 3, 8, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        want = m.encoder(m.normalize(x)[0])
    for src in (str(tmp_path / "official.pth"), str(tmp_path / "hf")):
        v = vivit(variant=1)
        report = init_from(v, src, verbose=False)
        assert report["kind"].startswith("VideoMAE") and report["mismatched"] == []
        with torch.no_grad():
            assert torch.allclose(v.forward_features(x), want, atol=1e-6)


def test_models_2_3_4_mapping(videomae):
    _, path = videomae
    sd = VideoMAE(ModelConfig(**GEOM)).encoder.state_dict()
    m4 = vivit(variant=4)
    assert init_from(m4, path, verbose=False)["unused"] == []
    m2 = vivit(variant=2, temporal_depth=2)
    r2 = init_from(m2, path, verbose=False)
    assert any(k.startswith("temporal_blocks.") for k in r2["new"])
    assert not any(k.startswith("blocks.") for k in r2["new"])
    for how in ("zero", "copy"):
        m3 = vivit(variant=3, temporal_init=how)
        r3 = init_from(m3, path, verbose=False)
        assert not any(k.startswith("blocks.") and ".temporal" not in k for k in r3["new"])
        blk = m3.blocks[0]
        if how == "zero":
            assert not blk.temporal_attn.proj.weight.any()
        else:
            assert torch.equal(blk.temporal_attn.qkv.weight, blk.attn.qkv.weight)
    assert len(sd) > 0


def test_model_3_with_zero_temporal_attention_is_the_spatial_model(videomae):
    _, path = videomae
    m3 = vivit(variant=3, temporal_init="zero")
    init_from(m3, path, verbose=False)
    x = torch.randn(1, 3, 8, 32, 32)
    blk = m3.blocks[0]
    t, h, w = m3.cfg.grid
    tokens = m3.tokens(x)
    from einops import rearrange
    frames = rearrange(tokens, "b (t n) d -> (b t) n d", t=t)
    spatial = frames + blk.attn(blk.norm1(frames))
    spatial = rearrange(spatial, "(b t) n d -> b (t n) d", t=t)
    spatial = spatial + blk.mlp(blk.norm2(spatial))
    assert torch.allclose(blk(tokens), spatial, atol=1e-6)


def test_uniform_tokens_from_a_tubelet_kernel_match_on_a_still_clip(videomae):
    m, path = videomae
    u = vivit(variant=1, tokenizer="uniform")
    report = init_from(u, path, verbose=False)
    assert "summed over time" in " ".join(report["notes"])
    frame = torch.randn(1, 3, 1, 32, 32)
    still = frame.expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        assert torch.allclose(u.patch_embed(still), m.encoder.patch_embed(still), atol=1e-5)


@pytest.mark.parametrize("kernel_init", ["central", "average"])
def test_image_vit_initialisation(tmp_path, kernel_init):
    import timm
    torch.manual_seed(0)
    image = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, num_classes=10, embed_dim=96, depth=2, num_heads=3)
    for blk in image.blocks:
        torch.nn.init.normal_(blk.attn.qkv.bias, std=0.5)  # includes a key bias
    save_file({k: v.contiguous() for k, v in image.state_dict().items()},
              str(tmp_path / "vit.safetensors"))
    v = ViViT(VivitConfig(preset="vit_tiny", depth=2, img_size=32, patch_size=8, num_frames=8,
                          tubelet_size=2, num_classes=3, pos="learned")).eval()
    report = init_from(v, str(tmp_path / "vit.safetensors"), kernel_init, verbose=False)
    assert report["kind"] == "image ViT"
    assert {"head.weight", "head.bias"} <= set(report["unused"])
    assert "cls_token" in report["unused"]
    # a still clip: each tubelet token equals the image patch token (central or average)
    img = torch.randn(1, 3, 32, 32)
    still = img[:, :, None].expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        assert torch.allclose(v.patch_embed(still)[:, :16], image.patch_embed(img), atol=1e-5)
        # positions: the image table (without its CLS row) tiled over time
        table = image.pos_embed[:, 1:]
        assert torch.allclose(v.pos_embed[:, :16], table, atol=1e-5)
        assert torch.allclose(v.pos_embed[:, 16:32], table, atol=1e-5)
        # attention without the key bias equals timm's attention with it (softmax ignores it)
        tokens = torch.randn(1, 16, 96)
        assert torch.allclose(v.blocks[0].attn(tokens), image.blocks[0].attn(tokens), atol=1e-5)


def test_an_encoder_of_another_geometry_is_refused_unless_partial(videomae, tmp_path):
    from finetune.init import InitMismatch
    _, path = videomae                                   # vit_tiny: width 96, depth 4
    big = ViViT(VivitConfig(**{**GEOM, "preset": "vit_s"}, num_classes=3))
    with pytest.raises(InitMismatch, match=r"fits 0 of the .* encoder has width 96, depth 4, "
                                           r"token kernel 2x8x8.*model has width 384, depth 12"
                                           r".*run.init_partial=true"):
        init_from(big, path, verbose=False)
    report = init_from(big, path, verbose=False, allow_partial=True)
    assert report["loaded"] == [] and len(report["mismatched"]) > 10
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        init_from(vivit(variant=1), str(tmp_path / "junk.safetensors"), verbose=False)


def test_an_official_finetuned_file_of_other_classes_reports_its_head_as_unused(videomae,
                                                                               tmp_path):
    m, _ = videomae
    enc = {k[len("encoder."):]: v for k, v in m.state_dict().items() if k.startswith("encoder.")}
    enc.update({"fc_norm.weight": torch.ones(96), "fc_norm.bias": torch.zeros(96),
                "head.weight": torch.zeros(400, 96), "head.bias": torch.zeros(400)})
    torch.save({"module": enc}, tmp_path / "finetuned.pth")
    report = init_from(vivit(variant=1), str(tmp_path / "finetuned.pth"), verbose=False)
    unused = " ".join(report["unused"])
    assert len(report["unused"]) == 2 and "head.weight" in unused and "head.bias" in unused
    assert "fc_norm.weight" in report["loaded"]          # the pooled feature's norm fits
    assert len(report["loaded"]) == len([k for k in enc if not k.startswith("head")])


def test_an_official_finetuned_file_gives_the_official_logits(videomae, tmp_path):
    """Official fine-tuned VideoMAE: blocks at the top level, norm = Identity, mean pooling,
    fc_norm on the pooled feature, then the head."""
    from finetune.init import resolve_norm_layout
    m, _ = videomae
    enc = {k[len("encoder."):]: v for k, v in m.state_dict().items()
           if k.startswith("encoder.") and not k.startswith("encoder.norm.")}
    g = torch.Generator().manual_seed(5)
    fc_w, fc_b = 1 + 0.1 * torch.randn(96, generator=g), 0.1 * torch.randn(96, generator=g)
    head_w, head_b = torch.randn(3, 96, generator=g), torch.randn(3, generator=g)
    torch.save({"module": {**enc, "fc_norm.weight": fc_w, "fc_norm.bias": fc_b,
                           "head.weight": head_w, "head.bias": head_b}}, tmp_path / "ft.pth")
    x = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    with torch.no_grad():   # the official computation, from the encoder's own blocks
        t = m.encoder.patch_embed(m.normalize(x)[0]) + m.encoder.pos_embed
        for blk in m.encoder.blocks:
            t = blk(t)
        want = torch.nn.functional.layer_norm(t.mean(1), (96,), fc_w, fc_b, 1e-6) @ head_w.T \
            + head_b
    cfg = resolve_norm_layout(VivitConfig(**GEOM, num_classes=3), str(tmp_path / "ft.pth"))
    assert cfg.norm_layout == "pooled"
    v = ViViT(cfg).eval()
    report = init_from(v, str(tmp_path / "ft.pth"), verbose=False)
    assert {"fc_norm.weight", "head.weight"} <= set(report["loaded"]) and report["new"] == []
    with torch.no_grad():
        assert (v(x) - want).abs().max() < 1e-5
    # our own export keeps the token norm
    assert resolve_norm_layout(VivitConfig(**GEOM), "").norm_layout == "tokens"


def test_head_norm_batch_standardises_the_pooled_feature_and_takes_no_layernorm(videomae,
                                                                                tmp_path):
    """model.head_norm=batch: a BatchNorm between the pooled feature and the head; a fine-tuned
    file's fc_norm (a LayerNorm's affine) is reported unused, not loaded into it."""
    m, path = videomae
    v = vivit(variant=1, head_norm="batch")
    assert isinstance(v.fc_norm, torch.nn.BatchNorm1d)
    report = init_from(v, path, verbose=False)
    assert report["unused"] == [] and "fc_norm.running_mean" in report["new"]
    v.train()
    x = torch.randint(0, 256, (4, 3, 8, 32, 32), dtype=torch.uint8)
    pooled = v.forward_features(x).mean(1)
    normed = v.fc_norm(pooled)
    want = (pooled - pooled.mean(0)) / (pooled.var(0, unbiased=False) + 1e-6).sqrt()
    assert (normed - want).abs().max() < 1e-4
    enc = {k[len("encoder."):]: t for k, t in m.state_dict().items() if k.startswith("encoder.")}
    enc.update({"fc_norm.weight": torch.full((96,), 3.0), "fc_norm.bias": torch.ones(96)})
    torch.save({"module": enc}, tmp_path / "finetuned.pth")
    v = vivit(variant=1, head_norm="batch")
    report = init_from(v, str(tmp_path / "finetuned.pth"), verbose=False)
    assert "fc_norm.weight" not in report["loaded"] and (v.fc_norm.weight == 1).all()
    assert any(u.startswith("fc_norm.weight (a LayerNorm's") for u in report["unused"])
    with pytest.raises(ValueError, match="model.head_norm must be layer or batch"):
        vivit(head_norm="group")
    with pytest.raises(ValueError, match="head_norm=batch is for families vivit"):
        VivitConfig(family="uniformer", preset="uniformer_tiny", num_classes=3,
                    head_norm="batch").resolved()


def test_finetuning_from_an_export_takes_its_geometry_and_refuses_a_conflicting_override(
        tmp_path, capsys):
    """An encoder trained at 32 px, 16-px patches and 4 frames is fine-tuned at that geometry
    with the stock 64 px / 8 px / 16-frame recipe; a command-line override that differs is one
    error naming both (exit 2), unless run.init_partial=true."""
    from finetune.__main__ import main
    from finetune.init import InitMismatch
    from finetune.train import config_from_cli
    from pretrain.export import export_encoder
    from pretrain.model import ModelConfig, initial_model
    mcfg = ModelConfig(preset="vit_tiny", img_size=32, patch_size=16, num_frames=4,
                       tubelet_size=2)
    export = str(tmp_path / "run" / "export")
    export_encoder(initial_model(mcfg, 0).state_dict(), mcfg, export, {"step": 0})
    recipe = "launch/configs/finetune/synthetic_vivit.yaml"
    for init in (export, str(tmp_path / "run")):           # the export, or the run holding it
        cfg = config_from_cli(recipe, init, [])
        m, d = cfg.model, cfg.data
        assert (m.img_size, m.patch_size, m.num_frames, m.tubelet_size) == (32, 16, 4, 2)
        assert (d.size, d.patch, d.num_frames) == (32, 16, 4)
    assert "model.img_size 32 (the recipe says 64)" in capsys.readouterr().err
    with pytest.raises(InitMismatch, match=r"model.num_frames=8 on the command line, but the "
                                           r"encoder .* was trained at num_frames 4"):
        config_from_cli(recipe, export, ["model.num_frames=8"])
    cfg = config_from_cli(recipe, export, ["model.num_frames=8", "run.init_partial=true"])
    assert (cfg.model.num_frames, cfg.model.img_size, cfg.data.num_frames) == (8, 32, 8)
    capsys.readouterr()
    assert main(["--config", recipe, "--init", export, "model.img_size=64",
                 f"run.dir={tmp_path / 'ft'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finetune: error: model.img_size=64 on the command")
    assert not (tmp_path / "ft").exists()                  # refused before the run folder exists


def test_finetuning_from_an_export_normalises_inputs_as_its_pre_training_did(tmp_path, capsys):
    """An encoder pre-trained on inputs normalised with its set's own statistics is fine-tuned
    with those, not with the recipe's ImageNet ones (the model normalises, so a mismatch would
    train silently on shifted inputs); a differing command-line value is refused, unless
    run.init_partial=true."""
    from finetune.init import InitMismatch
    from finetune.train import config_from_cli
    from pretrain.export import export_encoder
    from pretrain.model import IMAGENET_MEAN, ModelConfig, initial_model
    stats = dict(mean=(0.2, 0.25, 0.3), std=(0.15, 0.16, 0.17))
    mcfg = ModelConfig(preset="vit_tiny", img_size=64, patch_size=8, num_frames=16,
                       tubelet_size=2, **stats).resolved()
    export = str(tmp_path / "export")
    export_encoder(initial_model(mcfg, 0).state_dict(), mcfg, export, {"step": 0})
    recipe = "launch/configs/finetune/synthetic_vivit.yaml"
    cfg = config_from_cli(recipe, export, [])
    assert (tuple(cfg.model.mean), tuple(cfg.model.std)) == (stats["mean"], stats["std"])
    err = capsys.readouterr().err
    assert "model.mean [0.2, 0.25, 0.3] (the recipe says [0.485, 0.456, 0.406])" in err
    assert "model.img_size" not in err                      # the geometry already agreed
    same = config_from_cli(recipe, export, ["model.mean=[0.2,0.25,0.3]"])
    assert tuple(same.model.mean) == stats["mean"]
    with pytest.raises(InitMismatch, match=r"model.mean=\[0.485, 0.456, 0.406\] on the command "
                                           r"line, but the encoder .* was trained at mean "
                                           r"\[0.2, 0.25, 0.3\]"):
        config_from_cli(recipe, export, [f"model.mean={list(IMAGENET_MEAN)}"])
    kept = config_from_cli(recipe, export, [f"model.mean={list(IMAGENET_MEAN)}",
                                            "run.init_partial=true"])
    assert tuple(kept.model.mean) == IMAGENET_MEAN and tuple(kept.model.std) == stats["std"]
    # an export at ImageNet's statistics with a recipe that leaves them unset: nothing to take
    plain = ModelConfig(preset="vit_tiny", img_size=64, patch_size=8, num_frames=16).resolved()
    export_encoder(initial_model(plain, 0).state_dict(), plain, str(tmp_path / "plain"), {})
    capsys.readouterr()
    assert config_from_cli(recipe, str(tmp_path / "plain"), []).model.mean is None
    assert "input statistics" not in capsys.readouterr().err
