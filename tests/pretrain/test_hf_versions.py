"""Our HuggingFace export and import against two transformers releases: the pinned 5.x (this
environment) and 4.57 (installed by launch/setup.sh in its own folder, run in a subprocess).
Outputs must agree with ours within 1e-5, in both directions."""
import os
import subprocess
import sys

import pytest
import torch
from transformers import VideoMAEForPreTraining

from data.masks import tube_mask
from pretrain.convert import load_published
from pretrain.export import export_hf
from pretrain.model import VideoMAE
from tests.pretrain.test_convert import pair

OLD = os.path.join(os.environ.get("VIRTUAL_ENV", sys.prefix), "extra", "transformers-4.57")

SCRIPT = r"""
import sys, torch, transformers
from transformers import VideoMAEForPreTraining
assert transformers.__version__.startswith("4.57"), transformers.__version__
src, out, saved = sys.argv[1:4]
hf, info = VideoMAEForPreTraining.from_pretrained(src, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"], info
x, mask = torch.load(f"{out}/input.pt")
with torch.no_grad():
    torch.save(hf.eval()(x, bool_masked_pos=mask).logits, f"{out}/logits.pt")
hf.save_pretrained(saved)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    ours, _ = pair("sdpa")
    out = tmp_path_factory.mktemp("hf")
    export_hf(ours.state_dict(), ours.cfg, str(out / "ours"))
    c = ours.cfg
    g = torch.Generator().manual_seed(3)
    video = torch.randint(0, 256, (2, 3, c.num_frames, c.img_size, c.img_size),
                          dtype=torch.uint8, generator=g)
    mask = tube_mask(2, c.grid, 0.75, g)
    with torch.no_grad():
        want = ours(video, mask)["pred"]
    x, _ = ours.normalize(video)
    torch.save((x.permute(0, 2, 1, 3, 4).contiguous(), mask), out / "input.pt")
    return ours, out, video, mask, want


def test_the_pinned_transformers_loads_our_export_strictly(exported):
    _, out, _, _, want = exported
    hf, info = VideoMAEForPreTraining.from_pretrained(str(out / "ours"),
                                                      output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x, mask = torch.load(out / "input.pt")
    with torch.no_grad():
        got = hf.eval()(x, bool_masked_pos=mask).logits
    assert (got - want).abs().max() < 1e-5


def test_transformers_4_57_loads_our_export_and_we_load_its_files(exported):
    assert os.path.isfile(os.path.join(OLD, ".complete")), \
        f"{OLD} missing: run launch/setup.sh (it installs transformers 4.57 there)"
    ours, out, video, mask, want = exported
    env = {**os.environ, "PYTHONPATH": OLD}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out / "ours"), str(out),
                        str(out / "saved_by_4.57")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (torch.load(out / "logits.pt") - want).abs().max() < 1e-5
    # and the other way: a folder written by 4.57's save_pretrained, into our model
    sd, fields = load_published(str(out / "saved_by_4.57"))
    back = VideoMAE(ours.cfg).eval()
    back.load_state_dict(sd)
    with torch.no_grad():
        assert (back(video, mask)["pred"] - want).abs().max() < 1e-5
    assert fields["embed_dim"] == ours.cfg.embed_dim


def test_the_export_carries_a_processor_that_makes_our_input(exported, tmp_path):
    """preprocessor_config.json loads with AutoVideoProcessor (as the README's snippet does),
    and on frames already at the model's side it gives our normalised input."""
    import numpy as np
    from transformers import AutoVideoProcessor
    ours, _ = pair("sdpa")
    _, out, _, _, _ = exported
    proc = AutoVideoProcessor.from_pretrained(str(out / "ours"))
    c = ours.cfg
    frames = np.random.default_rng(0).integers(0, 256, (c.num_frames, c.img_size, c.img_size, 3),
                                               dtype=np.uint8)
    got = proc(list(frames), return_tensors="pt")["pixel_values"][0]       # (T, C, H, W)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None]
    want, _ = ours.normalize(video)
    assert (got.permute(1, 0, 2, 3) - want[0]).abs().max() < 1e-5
