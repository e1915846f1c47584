"""`python -m pretrain.visualize MODEL VIDEO [--out DIR] [--mask-ratio 0.9] [--seed 0]`: what a
pre-trained model reconstructs of a video it is shown through a tube mask.

    python -m pretrain.visualize runs/quickstart/pretrain clip.mp4 --out runs/quickstart/vis
    python -m pretrain.visualize runs/quickstart/pretrain/checkpoints/step00000200 clip.mp4
    python -m pretrain.visualize path/to/hf_videomae_pretraining_folder clip.mp4
    python -m pretrain.visualize runs/quickstart/pretrain runs/quickstart/data --sample 3

MODEL: a pre-training run folder (its latest checkpoint), one of its checkpoint folders, or a
published pre-training checkpoint with its decoder (an official VideoMAE .pth, or a HuggingFace
VideoMAEForPreTraining folder). The clip is the model's ``num_frames`` at the run's
``data.stride`` (published files: ``--stride``, default 4) from the middle of the video, its
short side resized and the centre cropped to the model's side. A phone video's display rotation
is applied. Writes to DIR (default: beside the video):
  NAME_recon.png   three rows (the clip, the masked input, the reconstruction) of frames;
  NAME_recon.mp4   the same three rows as a video;
  NAME_recon.npz   the clip, the mask and the reconstruction as floats (before clamping).
The reconstruction of a hidden tubelet is the prediction un-normalised with that tubelet's own
mean and std (as the official visualisation does; with norm_pix_loss off, taken as is), and the
visible tubelets are the input's. Prints the model's loss on this clip and mask.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def load_pretraining_model(path: str):
    """(VideoMAE in eval mode, stride or None, what was loaded) from a run folder, one of its
    checkpoints, or a published pre-training file or folder."""
    from .model import ModelConfig, VideoMAE
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model {path} not found; give a pre-training run folder, one of "
                                f"its checkpoints, or a published pre-training checkpoint")
    run_dir, tag = None, None
    if os.path.isfile(os.path.join(path, "config.yaml")) and \
            os.path.isdir(os.path.join(path, "checkpoints")):
        run_dir = path
    elif os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                                     "config.yaml")) and os.path.isdir(path):
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        tag = os.path.basename(os.path.abspath(path))
    if run_dir:
        from .config import PretrainConfig, load_config
        from .runtime.config import load_yaml
        from .runtime.engine import read_model_weights
        saved = load_yaml(os.path.join(run_dir, "config.yaml")) or {}
        if "init" in (saved.get("run") or {}) or "family" in (saved.get("model") or {}):
            raise ValueError(f"{run_dir} is a fine-tuning run: it has no decoder to reconstruct "
                             f"with. Give the pre-training run its encoder came from (its "
                             f"run.init), or use finetune.predict with this one")
        cfg = load_config(os.path.join(run_dir, "config.yaml"), schema=PretrainConfig)
        ckpts = os.path.join(run_dir, "checkpoints")
        if tag is None:
            latest = os.path.join(ckpts, "latest")
            if not os.path.isfile(latest):
                raise ValueError(f"{run_dir} has no finished checkpoint yet; let the run save one "
                                 f"(train.ckpt_every) or give another model")
            with open(latest) as f:
                tag = f.read().strip()
        model = VideoMAE(cfg.model)
        weights = read_model_weights(ckpts, tag)
        model.load_state_dict(weights, strict=False)
        return model.eval(), cfg.data.stride, f"{run_dir} checkpoint {tag}"
    from .convert import load_published
    sd, fields = load_published(path)
    if not any(k.startswith("decoder.") for k in sd):
        raise ValueError(f"{path} holds an encoder without the decoder (a fine-tuned or "
                         f"encoder-only file); reconstructions need a pre-training checkpoint")
    if not fields:                 # an official file: the widths from the tensors themselves
        from .convert import fields_from_state_dict
        fields = fields_from_state_dict(sd)
    # published files have no stats head (it only serves our training pictures)
    model = VideoMAE(ModelConfig(**fields, predict_stats=False))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "pos_embed" not in k]
    if missing:
        raise ValueError(f"{path} does not fit a VideoMAE of the geometry found "
                         f"(missing {missing[:3]})")
    return model.eval(), None, path


def video_bytes(path: str, sample: int = 0) -> tuple[bytes, str, int]:
    """(bytes, a name, frame step) of a video file, or of sample ``sample`` of a prepared set
    (its frames may be every k-th source frame: the step says so)."""
    from data.store import is_remote
    if os.path.isdir(path) or is_remote(path):
        from data.manifest import load_shard_set
        from data.shard_reader import decode_sample, leading_samples
        ss = load_shard_set(path, "test")
        raws = list(leading_samples(ss, sample + 1))
        kind, payload, _ = decode_sample(raws[sample]) if len(raws) > sample else (None,) * 3
        if kind != "video":
            raise ValueError(f"{path} has no video sample {sample}")
        step = int(ss.options.get("frame_step", 1) or 1)
        return payload, raws[sample]["__key__"], step
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path} not found")
    with open(path, "rb") as f:
        return f.read(), os.path.splitext(os.path.basename(path))[0], 1


def clip_of(data: bytes, num_frames: int, stride: int, size: int) -> np.ndarray:
    """The centre clip (T, S, S, 3) uint8, upright, short side resized and centre-cropped."""
    from data.clips import eval_views
    from data.stream import StreamConfig
    cfg = StreamConfig(num_frames=num_frames, size=size, stride=stride, test_clips=1,
                       test_crops=1, mask="none")
    view = eval_views("video", data, cfg, stride)[0]   # (C, T, S, S)
    return view.permute(1, 2, 3, 0).numpy()


def reconstruct(model, clip: np.ndarray, mask_ratio: float, seed: int) -> dict:
    """Run the model on ``clip`` (T, S, S, 3) with a tube mask; returns floats in [0, 1] space
    (unclamped): pixels, masked, recon (T, S, S, C), the mask (N,), the model's loss."""
    import torch
    from einops import rearrange
    from data.masks import make_mask
    from .model import patchify, unpatchify
    cfg = model.cfg
    video = torch.from_numpy(clip).permute(3, 0, 1, 2)[None]              # (1, C, T, H, W)
    if video.shape[1] != cfg.in_chans:
        video = video[:, :cfg.in_chans]
    grid = (cfg.num_frames // cfg.tubelet_size, clip.shape[1] // cfg.patch_size,
            clip.shape[2] // cfg.patch_size)
    mask = make_mask("tube", 1, grid, mask_ratio, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(video, mask)
        _, pixels = model.normalize(video)
        patches = patchify(pixels.float(), cfg.tubelet_size, cfg.patch_size)  # (1, N, P, C)
        c = patches.shape[-1]
        pred = rearrange(out["pred"].float(), "b n (p c) -> b n p c", c=c)
        hidden = patches[mask]                                             # (N_rec, P, C)
        if cfg.norm_pix_loss:
            pred = pred[0] * (hidden.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6) \
                + hidden.mean(dim=-2, keepdim=True)
        else:
            pred = pred[0]
        rec = patches.clone()
        rec[mask] = pred
        recon = unpatchify(rec, grid, cfg.tubelet_size, cfg.patch_size)
        cover = mask.float().reshape(1, 1, *grid).repeat_interleave(cfg.tubelet_size, 2) \
            .repeat_interleave(cfg.patch_size, 3).repeat_interleave(cfg.patch_size, 4)
        masked = pixels.float() * (1 - cover) + 0.35 * cover

    def frames(x):
        return x[0].permute(1, 2, 3, 0).numpy()
    return {"pixels": frames(pixels.float()), "masked": frames(masked), "recon": frames(recon),
            "mask": mask[0].numpy(), "loss": float(out["recon_loss"]),
            "grid": grid, "tubelet": cfg.tubelet_size, "patch": cfg.patch_size,
            "norm_pix_loss": cfg.norm_pix_loss}


def loss_of(recon: np.ndarray, pixels: np.ndarray, mask: np.ndarray, tubelet: int, patch: int,
            norm_pix_loss: bool) -> float:
    """The model's loss recomputed from a written reconstruction: its hidden tubelets,
    normalised as the targets are, against the targets."""
    import torch
    from .model import patchify

    def tokens(x):
        return patchify(torch.from_numpy(np.ascontiguousarray(x)).permute(3, 0, 1, 2)[None]
                        .double(), tubelet, patch)[0]
    rec, true = tokens(recon)[torch.from_numpy(mask)], tokens(pixels)[torch.from_numpy(mask)]
    if norm_pix_loss:
        mean, std = true.mean(-2, keepdim=True), true.var(-2, unbiased=True, keepdim=True).sqrt()
        rec, true = (rec - mean) / (std + 1e-6), (true - mean) / (std + 1e-6)
    return float(((rec - true) ** 2).mean())


def write_pictures(res: dict, out_base: str, fps: float = 4.0) -> list[str]:
    from PIL import Image
    from data.atomic import atomic_path
    from data.decode import encode_video
    rows = [np.clip(res[k], 0, 1) for k in ("pixels", "masked", "recon")]
    if rows[0].shape[-1] == 1:
        rows = [np.repeat(r, 3, -1) for r in rows]
    rows = [(r * 255).round().astype(np.uint8) for r in rows]            # (T, H, W, 3)
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    png = out_base + ".png"
    with atomic_path(png) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    stacked = np.concatenate(rows, axis=1)                                # (T, 3H, W, 3)
    h, w = stacked.shape[1:3]
    stacked = np.pad(stacked, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    mp4 = out_base + ".mp4"
    with atomic_path(mp4) as tmp, open(tmp, "wb") as f:
        f.write(encode_video(list(stacked), fps=fps, crf=18))
    npz = out_base + ".npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, pixels=res["pixels"], masked=res["masked"], recon=res["recon"],
                 mask=res["mask"], loss=res["loss"], tubelet=res["tubelet"],
                 patch=res["patch"], norm_pix_loss=res["norm_pix_loss"])
    return [png, mp4, npz]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.visualize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="pre-training run folder, checkpoint folder, or published "
                                  "pre-training checkpoint (with its decoder)")
    ap.add_argument("video", help="a video file, or a prepared folder or set in a store "
                                  "(s3://, https://, pipe:; its test split when it has splits; "
                                  "--sample picks the sample)")
    ap.add_argument("--sample", type=int, default=0, help="which sample of a prepared folder")
    ap.add_argument("--out", help="folder for the pictures (default: beside the video; the "
                                  "current folder for a set in a store)")
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0, help="which tube mask")
    ap.add_argument("--stride", type=int, help="frame stride (default: the run's data.stride; "
                                               "4 for published files)")
    args = ap.parse_args(argv)
    if not 0 < args.mask_ratio < 1:
        ap.error(f"--mask-ratio takes a value in (0, 1), not {args.mask_ratio}")
    from .runtime.cli import run_command

    def body() -> int:
        from data.decode import VideoDecodeError
        model, stride, what = load_pretraining_model(args.model)
        stride = args.stride or stride or 4
        data, name, step = video_bytes(args.video, args.sample)
        if stride % step:
            raise ValueError(f"stride {stride} is not a multiple of the frame step {step} of "
                             f"{args.video}; give --stride {step * max(1, stride // step)}")
        try:
            clip = clip_of(data, model.cfg.num_frames, stride // step, model.cfg.img_size)
        except VideoDecodeError as e:
            raise ValueError(f"{args.video}: {e}") from None
        res = reconstruct(model, clip, args.mask_ratio, args.seed)
        from data.store import is_remote
        out_dir = args.out or (os.getcwd() if is_remote(args.video) else args.video
                               if os.path.isdir(args.video) else
                               os.path.dirname(os.path.abspath(args.video)))
        os.makedirs(out_dir, exist_ok=True)
        base = os.path.join(out_dir, name + "_recon")
        for p in write_pictures(res, base):
            print(p)
        print(f"pretrain.visualize: {what}; loss {res['loss']:.4f} on this clip with "
              f"{100 * args.mask_ratio:.0f}% of its tubes hidden (seed {args.seed})",
              file=sys.stderr)
        return 0
    return run_command("pretrain.visualize", body)


if __name__ == "__main__":
    raise SystemExit(main())
