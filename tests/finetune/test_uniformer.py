"""UniFormer (family uniformer) and the UniFormer-armed VideoMAE encoder (family uniformer_head)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from finetune.init import InitMismatch, init_from
from finetune.models import build_model, layer_decay_scale
from finetune.uniformer import UniFormer, UniformerSpec, stage_grids
from finetune.uniformer_head import UniFormerHead
from finetune.vivit import ViViT, VivitConfig
from pretrain.export import export_encoder
from pretrain.model import ModelConfig, VideoMAE


def _recipe_geometry():
    from finetune.train import FinetuneConfig
    from pretrain.config import load_config
    u = load_config("launch/configs/finetune/medmnist3d_uniformer.yaml",
                    schema=FinetuneConfig).model.uniformer
    return dict(stem=u.stem, downsample=u.downsample)


VOLUME_28 = _recipe_geometry()       # the 28^3 recipe's stem and downsampling
VOLUME_64 = dict(stem=[4, 4, 0], downsample=[[2, 2, 0], [2, 2, 0], [2, 2, 0]])  # its 64^3 note


def uniformer(preset="uniformer_tiny", frames=8, size=32, chans=3, classes=3, **spec):
    return UniFormer(VivitConfig(family="uniformer", preset=preset, num_frames=frames,
                                 img_size=size, in_chans=chans, num_classes=classes,
                                 uniformer=UniformerSpec(**spec)))


def test_presets_match_the_published_parameter_counts():
    # UniFormer-S / -B 16x4 on Kinetics-400 (400 classes): 21.4M / 49.8M (the published table)
    for preset, published in (("uniformer_s", 21.4e6), ("uniformer_b", 49.8e6)):
        n = sum(p.numel() for p in uniformer(preset, 16, 224, classes=400).parameters())
        assert abs(n - published) / published < 0.02, (preset, n)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["uniformer_s", "uniformer_b"])
@pytest.mark.parametrize("geometry", ["28^3", "64^3", "16x112^2"])
def test_every_preset_trains_a_step_on_volumes_and_video(preset, geometry):
    frames, size, chans, spec = {"28^3": (28, 28, 1, VOLUME_28), "64^3": (64, 64, 1, VOLUME_64),
                                 "16x112^2": (16, 112, 3, {})}[geometry]
    torch.manual_seed(0)
    m = uniformer(preset, frames, size, chans, classes=5, **spec).train()
    grids = stage_grids(m.cfg, m.spec)
    assert all(g >= 2 for g in grids[-1]) or geometry == "16x112^2", grids
    x = torch.randint(0, 256, (2, chans, frames, size, size), dtype=torch.uint8)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    loss = F.cross_entropy(m(x), torch.tensor([1, 4]))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    opt.step()
    assert m(x).shape == (2, 5) and torch.isfinite(loss)


def _randomise(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.add_(torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


@pytest.mark.parametrize("how", ["average", "central"])
def test_a_2d_checkpoint_inflated_gives_the_2d_logits_on_a_still_clip(tmp_path, how):
    cfg = VivitConfig(family="uniformer", preset="uniformer_tiny", num_frames=8, img_size=32,
                      num_classes=4)
    cfg.uniformer.temporal_padding = "replicate"
    torch.manual_seed(0)
    image = _randomise(UniFormer(cfg, spatial_dims=2))   # the published image layout
    sd = image.state_dict()
    assert sd["patch_embed1.proj.weight"].ndim == 4 and "blocks3.0.attn.q_bias" in sd
    # a published file fuses the qkv bias; ours splits it (the key part does not matter)
    sd = {k: v for k, v in sd.items() if not k.endswith(("q_bias", "v_bias"))}
    for k in [k for k in image.state_dict() if k.endswith("attn.q_bias")]:
        q, v = image.state_dict()[k], image.state_dict()[k[:-6] + "v_bias"]
        sd[k[:-6] + "qkv.bias"] = torch.cat([q, torch.randn_like(q), v])
    torch.save({"model": sd}, tmp_path / "uniformer_image.pth")
    video = UniFormer(cfg).eval()
    report = init_from(video, str(tmp_path / "uniformer_image.pth"), how, verbose=False)
    assert report["kind"] == "image UniFormer (2D)" and not report["mismatched"]
    assert report["new"] == [] and report["unused"] == []
    frame = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    clip = frame[:, :, None].expand(-1, -1, 8, -1, -1).contiguous()
    with torch.no_grad():
        want, got = image(frame), video(clip)
    assert (got - want).abs().max() < 1e-5, (got - want).abs().max()
    # with the published zero padding in time, averaged kernels see the padding at the edge
    # frames and the logits move; central kernels never reach the padding
    cfg.uniformer.temporal_padding = "zeros"
    zeros = UniFormer(cfg).eval()
    init_from(zeros, str(tmp_path / "uniformer_image.pth"), how, verbose=False)
    with torch.no_grad():
        diff = (zeros(clip) - want).abs().max()
    assert diff > 1e-4 if how == "average" else diff < 1e-5


def test_a_video_checkpoint_loads_by_name_and_a_vit_encoder_is_refused(tmp_path):
    torch.manual_seed(0)
    a = _randomise(uniformer())
    torch.save(a.state_dict(), tmp_path / "u.pt")
    b = uniformer(classes=7).eval()
    report = init_from(b, str(tmp_path / "u.pt"), verbose=False)
    assert report["new"] == ["head.bias", "head.weight"]
    x = torch.randint(0, 256, (1, 3, 8, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(a.forward_features(x), b.forward_features(x))
    vm = VideoMAE(ModelConfig(preset="vit_tiny", img_size=32, patch_size=8, num_frames=8))
    export_encoder(vm.state_dict(), vm.cfg, str(tmp_path / "export"), {})
    with pytest.raises(InitMismatch, match="uniformer_head"):
        init_from(uniformer(), str(tmp_path / "export"), verbose=False)
    with pytest.raises(InitMismatch, match="preset"):
        init_from(uniformer("uniformer_s", 8, 64), str(tmp_path / "u.pt"), verbose=False)


def test_layer_decay_runs_from_the_stem_to_the_head():
    m = uniformer("uniformer_s", 16, 64)
    scale = layer_decay_scale(m, 0.5)
    order = ["patch_embed1.proj.weight", "blocks1.0.conv1.weight", "blocks1.2.attn.weight",
             "patch_embed2.proj.weight", "blocks2.3.mlp.fc1.weight", "blocks3.7.attn.qkv.weight",
             "blocks4.2.mlp.fc2.weight", "head.weight"]
    s = [scale(n) for n in order]
    assert s == sorted(s) and s[-1] == 1.0 and s[0] == 0.5 ** 19
    assert scale("patch_embed2.proj.weight") == scale("blocks2.0.conv1.weight")


GEOM = dict(preset="vit_tiny", img_size=32, patch_size=8, num_frames=8, tubelet_size=2)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.manual_seed(0)
    m = VideoMAE(ModelConfig(**GEOM)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.normal_(std=0.05)
    out = tmp_path_factory.mktemp("enc")
    export_encoder(m.state_dict(), m.cfg, str(out / "export"), {})
    torch.save({"model": m.state_dict()}, out / "official.pth")
    return str(out)


@pytest.mark.parametrize("source", ["export", "official.pth"])
def test_the_armed_encoder_starts_as_the_plain_encoder_exactly(encoder, source):
    path = os.path.join(encoder, source)
    plain = ViViT(VivitConfig(**GEOM, num_classes=3)).eval()
    init_from(plain, path, verbose=False)
    armed = UniFormerHead(VivitConfig(**GEOM, family="uniformer_head", num_classes=3)).eval()
    report = init_from(armed, path, verbose=False)
    assert report["mismatched"] == [] and not [k for k in report["new"] if
                                               k.startswith(("blocks.", "patch_embed."))]
    assert any(k.startswith("local_mhra.") for k in report["new"])
    assert any(k.startswith("global_blocks.") for k in report["new"])
    assert {"gate", "query_token"} <= set(report["new"])
    x = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        want = plain.forward_features(x).mean(1)
        got = armed.pooled(x)
    assert (got - want).abs().max() < 1e-6
    # the branches are live: one step moves the gate and opens them
    armed.train()
    opt = torch.optim.SGD(armed.parameters(), lr=0.1)
    F.cross_entropy(armed(x), torch.tensor([0, 2])).backward()
    assert armed.gate.grad.abs().sum() > 0
    assert armed.local_mhra[0].up.weight.grad.abs().sum() > 0
    opt.step()
    armed.eval()
    with torch.no_grad():
        assert (armed.pooled(x) - want).abs().max() > 1e-6


def test_armed_layer_decay_follows_the_encoder_layers():
    m = build_model(VivitConfig(**GEOM, family="uniformer_head", num_classes=3))
    scale = layer_decay_scale(m, 0.5)
    assert scale("local_mhra.1.up.weight") == scale("blocks.1.attn.qkv.weight")
    assert scale("global_blocks.0.q.weight") == scale("blocks.0.mlp.fc1.weight")  # 4 layers
    assert scale("gate") == scale("head.weight") == 1.0
    assert scale("patch_embed.proj.weight") == 0.5 ** 5


def _recipe(tmp_path, synthetic_set, model):
    import yaml
    recipe = {
        "run": {"dir": str(tmp_path / "ft"), "seed": 0},
        "data": {"shards": synthetic_set, "batch_size": 8, "num_workers": 0,
                 "stride": 2, "flip": False, "mask": "none", "shuffle_buffer": 8,
                 "test_clips": 1, "test_crops": 1},
        "model": {"img_size": 32, "num_frames": 8, **model},
        "optim": {"lr": 1.0e-3, "warmup_epochs": 1, "layer_decay": 0.75},
        "runtime": {"engine": "plain", "precision": "fp32"},
        "log": {"every": 1, "progress": False},
        "train": {"epochs": 2},
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _losses(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r.get("split") == "train" and "loss" in r}


@pytest.mark.slow
def test_a_killed_uniformer_finetune_resumes_with_the_same_losses(synthetic_set, tmp_path):
    from tests.pretrain.conftest import subprocess_env
    recipe = _recipe(tmp_path, synthetic_set, {"family": "uniformer",
                                                "preset": "uniformer_tiny"})

    def run(run_dir, **env):
        return subprocess.run([sys.executable, "-m", "finetune", "--config", recipe, "--init",
                               "none", f"run.dir={run_dir}"], capture_output=True, text=True,
                              env=subprocess_env(**env))
    straight, cut = tmp_path / "a", tmp_path / "b"
    r = run(straight)
    assert r.returncode == 0, r.stderr
    assert "UniFormer uniformer_tiny" in r.stderr
    assert "step 4/12 loss" in r.stderr and "data-wait" in r.stderr   # stderr is not a TTY
    assert run(cut, TUBEMAE_KILL_AFTER_STEP="8").returncode != 0
    r = run(cut)
    assert r.returncode == 0 and "resuming at step 6" in r.stderr
    a, b = _losses(straight), _losses(cut)
    assert [s for s in a if s > 6] and all(a[s] == b[s] for s in a if s > 6)
    ra, rb = (json.load(open(d / "report.json")) for d in (straight, cut))
    assert ra["test"] == rb["test"] and ra["model"]["family"] == "uniformer"


def test_the_armed_encoder_finetunes_from_an_export(synthetic_set, tmp_path, encoder):
    from finetune.train import FinetuneConfig, train
    from pretrain.config import load_config
    recipe = _recipe(tmp_path, synthetic_set, {"family": "uniformer_head", **GEOM,
                                                "arm": {"global_layers": 2}})
    report = train(load_config(recipe, [f"run.init={encoder}/export", "train.epochs=1",
                                        "runtime.precision=bf16"], schema=FinetuneConfig))
    assert report["init_report"]["mismatched"] == 0 and report["init_report"]["loaded"] > 0
    assert report["model"]["arm"]["global_layers"] == 2
    assert 0.0 <= report["test"]["acc"] <= 1.0


def test_batch_norm_keeps_fp32_statistics_under_bf16_parameters():
    from pretrain.layers import BatchNorm3d
    torch.manual_seed(0)
    ref, bn = torch.nn.BatchNorm3d(4), BatchNorm3d(4)
    bn.load_state_dict(ref.state_dict())
    for p in bn.parameters():       # what DeepSpeed's bf16 mode does: parameters only
        p.data = p.data.bfloat16()
    x = torch.randn(2, 4, 3, 5, 5)
    out = bn(x.bfloat16())
    assert out.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
    want = ref(x)
    assert (out.float() - want).abs().max() < 0.05
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-2)
    assert int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize("family", ["uniformer", "uniformer_head"])
def test_deepspeed_bf16_trains_both_families(family):
    from pretrain.config import OptimConfig, RuntimeConfig
    from pretrain.runtime.distributed import init_distributed
    from pretrain.runtime.engine import build_engine
    from pretrain.runtime.optim import param_groups
    from finetune.uniformer import ArmSpec
    model = {"uniformer": dict(preset="uniformer_tiny", img_size=32, num_frames=8),
             "uniformer_head": dict(GEOM, arm=ArmSpec(global_layers=2))}[family]
    m = build_model(VivitConfig(family=family, num_classes=3, **model))
    dist = init_distributed("cpu")
    engine = build_engine(m, param_groups(m, 0.05), OptimConfig(lr=1e-3),
                          RuntimeConfig(engine="deepspeed", precision="bf16"), dist, 2)
    x = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    for _ in range(2):
        loss = F.cross_entropy(engine(x).float(), torch.tensor([0, 2]))
        engine.backward(loss)
        engine.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("override,words", [
    ("model.family=uniformerr", ["model.family", "uniformer_head"]),
    ("model.preset=vit_s", ["vit_s", "uniformer_s"]),
    ("model.uniformer.stem=[7,8,0]", ["model.uniformer.stem", "no tokens"]),
    ("model.uniformer.temporal_padding=reflect", ["model.uniformer.temporal_padding"]),
    ("model.uniformer.downsample=[[1,2,0]]", ["3 downsample"]),
])
@pytest.mark.slow
def test_bad_uniformer_configs_stop_naming_the_key(ft_recipe, tmp_path, override, words):
    import yaml
    recipe, _ = ft_recipe
    tree = yaml.safe_load(open(recipe))
    tree["model"] = {"family": "uniformer", "preset": "uniformer_tiny", "img_size": 32,
                     "num_frames": 8}
    path = tmp_path / "u.yaml"
    path.write_text(yaml.safe_dump(tree))
    r = subprocess.run([sys.executable, "-m", "finetune", "--config", str(path), "--init", "none",
                        override], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr[-800:])
