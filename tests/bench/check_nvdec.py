"""By hand, on a machine with an NVIDIA GPU: NVDEC's frames against the CPU decoder's.

Encodes test videos of several sizes (a moving pattern, H.264 as prep writes it), decodes the
same frame positions with ``data.nvdec.NvdecDecoder`` (one kept decoder, re-pointed from video
to video and across sizes, as in a loader worker) and with the CPU decoder, and reports the
difference per video. The two differ by the YUV->RGB conversion only: the check fails when the mean absolute
difference exceeds ``--max-mean`` levels of 255 or a frame is missing or misplaced (a
misplaced frame differs by tens of levels, since the pattern moves every frame).

    python tests/bench/check_nvdec.py

Prints one line per video and a JSON line; exit 1 on a failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from data.decode import decode_frames, encode_video  # noqa: E402
from data.nvdec import NvdecDecoder, nvdec_unavailable  # noqa: E402


def moving_video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 2, width // 8 + 6, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    return np.stack([big[t % 8:t % 8 + height, t:t + width] for t in range(frames)])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-mean", type=float, default=3.0)
    args = ap.parse_args()
    device = torch.device("cuda")
    why = nvdec_unavailable(device)
    if why:
        sys.exit(f"check_nvdec: {why}")
    sizes = [(256, 340), (256, 456), (320, 240), (128, 128), (256, 340), (90, 160)]
    items, names = [], []
    for k, (h, w) in enumerate(sizes):
        frames = moving_video(40, h, w, k)
        data = encode_video(frames, fps=7.5, gop=8)
        idx = np.unique(np.random.default_rng(k).integers(0, 40, 20))
        items.append((data, idx))
        names.append(f"{w}x{h}")
    decoder = NvdecDecoder(0)
    rows, ok = [], True
    for rounds in range(2):  # the second round re-points warm decoders
        for name, (data, idx) in zip(names, items):
            g = torch.from_numpy(decoder.frames(data, lambda n: idx))
            want = torch.from_numpy(decode_frames(data, idx))
            if tuple(g.shape) != tuple(want.shape):
                rows.append({"video": name, "round": rounds, "shape": list(g.shape),
                             "want": list(want.shape), "ok": False})
                ok = False
                continue
            diff = (g.int() - want.int()).abs().float()
            per_frame = diff.mean(dim=(1, 2, 3))
            good = bool(per_frame.max() <= args.max_mean)
            ok &= good
            rows.append({"video": name, "round": rounds, "frames": len(idx),
                         "mean_abs": round(float(diff.mean()), 3),
                         "worst_frame_mean_abs": round(float(per_frame.max()), 3),
                         "max_abs": int(diff.max()), "ok": good})
    for r in rows:
        print(r)
    print(f"videos {decoder.videos}, decoded on the CPU after NVDEC refused them: "
          f"{decoder.cpu_fallbacks}")
    print(json.dumps({"check": "nvdec", "ok": ok, "rows": rows,
                      "cpu_fallbacks": decoder.cpu_fallbacks}))
    sys.exit(0 if ok and decoder.cpu_fallbacks == 0 else 1)


if __name__ == "__main__":
    main()
