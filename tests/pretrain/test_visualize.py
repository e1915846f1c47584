"""pretrain.visualize: pictures of what a pre-trained model reconstructs."""
import os

import numpy as np

from tests.conftest import write_video


def test_the_written_reconstruction_has_the_models_loss(tiny_recipe, tmp_path, capsys):
    """A run's reconstruction of a new video: PNG, mp4 and the floats; re-normalising the
    written hidden tubelets as the targets are gives back the model's own loss on that clip and
    mask. A checkpoint folder works the same; a missing model or video is one line."""
    from pretrain.config import load_config
    from pretrain.train import train
    from pretrain.visualize import loss_of, main
    recipe, run_dir = tiny_recipe
    train(load_config(recipe, ["log.picture_every=0"]))
    clip = write_video(str(tmp_path / "walk.mp4"), n=40, h=48, w=64, seed=3)
    out = tmp_path / "vis"
    assert main([run_dir, clip, "--out", str(out), "--mask-ratio", "0.75", "--seed", "1"]) == 0
    names = sorted(os.listdir(out))
    assert names == ["walk_recon.mp4", "walk_recon.npz", "walk_recon.png"]
    from PIL import Image
    png = Image.open(out / "walk_recon.png")
    assert png.size == (8 * 32, 3 * 32)                      # 8 frames across, 3 rows of 32 px
    z = np.load(out / "walk_recon.npz")
    mask = z["mask"]
    assert mask.mean() == 0.75
    err = capsys.readouterr().err
    model_loss = float(z["loss"])
    assert f"loss {model_loss:.4f}" in err
    again = loss_of(z["recon"], z["pixels"], mask, int(z["tubelet"]), int(z["patch"]),
                    bool(z["norm_pix_loss"]))
    assert abs(again - model_loss) <= 1e-4 * model_loss, (again, model_loss)
    # visible tubelets are the input's own pixels
    from pretrain.model import patchify
    import torch

    def tok(x):
        return patchify(torch.from_numpy(x).permute(3, 0, 1, 2)[None], 2, 8)[0]
    assert torch.equal(tok(z["recon"])[~torch.from_numpy(mask)],
                       tok(z["pixels"])[~torch.from_numpy(mask)])
    # a checkpoint folder of the run, another seed: another mask
    tag = open(os.path.join(run_dir, "checkpoints", "latest")).read().strip()
    assert main([os.path.join(run_dir, "checkpoints", tag), clip, "--out",
                 str(tmp_path / "v2")]) == 0
    assert not np.array_equal(np.load(tmp_path / "v2" / "walk_recon.npz")["mask"], mask)
    # the same weights as a HuggingFace VideoMAEForPreTraining folder: the same loss
    from pretrain.export import main as export
    assert export([run_dir, "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "enc")]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "hf"), clip, "--out", str(tmp_path / "v3"), "--stride", "2",
                 "--mask-ratio", "0.75", "--seed", "1"]) == 0
    assert abs(float(np.load(tmp_path / "v3" / "walk_recon.npz")["loss"]) - model_loss) < 1e-5
    # a sample of a prepared set (its test split), named by its key
    from pretrain.config import load_config as lc
    shards = lc(recipe, []).data.shards
    assert main([run_dir, shards, "--sample", "1", "--out", str(tmp_path / "v4")]) == 0
    assert len([n for n in os.listdir(tmp_path / "v4") if n.endswith("_recon.png")]) == 1
    capsys.readouterr()
    assert main([str(tmp_path / "enc" / "encoder.safetensors"), clip]) == 2
    assert "without the decoder" in capsys.readouterr().err
    assert main([str(tmp_path / "nope"), clip]) == 2
    assert main([run_dir, str(tmp_path / "nope.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("pretrain.visualize: error:") for line in err)
