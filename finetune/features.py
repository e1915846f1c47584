"""`python -m finetune.features MODEL INPUT... --out FEATS.npy`: one pooled embedding per input.

    python -m finetune.features runs/quickstart/model runs/quickstart/data/test --out test.npy
    python -m finetune.features runs/quickstart/pretrain/export DATA/train --out train.npy \\
        --config launch/configs/finetune/synthetic_vivit.yaml        # an encoder, as probed

MODEL: a fine-tuned model (run folder or ``finetune.export`` folder), or with ``--config
RECIPE`` an encoder (``--init`` of the probe: our export, an official or HF VideoMAE file,
``none``) inside the recipe's model section. INPUT: what ``finetune.predict`` takes (videos,
folders, list files, prepared split folders, volumes). The feature of an input is the model's
pooled feature before its head (ViViT: the mean token; UniFormer: the pooled last stage),
averaged over the evaluation's ``clips x crops`` views: for a prepared split, exactly the
features ``finetune.probe`` fits on.

Writes FEATS (.npy, float32 (N, D), or (N, tokens, D) with ``--tokens``; or .safetensors with
``features``) and FEATS's stem + .csv
(row, input, label when known). A prepared set is done a few shards at a time into FEATS.parts/
and an interrupted command continues from the parts done (same MODEL and INPUTs).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys

import numpy as np


def token_features(model):
    """The function giving an input's token grid (B, N, D): ViViT's tokens after its last
    block and norm. A family says whether it has one (``token_grid``); UniFormer's features
    are a 5-D map of another kind, and are refused."""
    if not getattr(model, "token_grid", False):
        raise ValueError(f"--tokens gives ViViT's token grid; {type(model).__name__} has none "
                         f"(use the pooled features)")
    return model.forward_features


def shard_set_features(model, data_cfg, shard_set, device, parts: str | None = None,
                       name: str = "set", tokens: bool = False, bar=None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (S, D) averaged over views, labels (S,), sample numbers (S,)) of every sample
    of ``shard_set``, ordered by sample number; computed ``max(1, workers)`` shards at a time
    (each chunk saved under ``parts`` when given, and taken from there when already done)."""
    from .evaluate import mean_per_sample, stream_outputs
    model.eval()
    fn = token_features(model) if tokens else model.pooled
    chunk = max(1, data_cfg.num_workers)
    out_f, out_l, out_i = [], [], []
    first = 0
    for c in range(0, len(shard_set.shards), chunk):
        shards = shard_set.shards[c:c + chunk]
        part = os.path.join(parts, f"{name}-{c:06d}.npz") if parts else None
        if part and os.path.isfile(part):
            with np.load(part) as z:
                f, lab, idx = z["features"], z["labels"], z["index"]
            if bar is not None:
                bar.update(sum(s.samples for s in shards))
        else:
            sub = dataclasses.replace(shard_set, shards=shards)
            idx, feats, labels = stream_outputs(lambda video: fn(video.to(device)), data_cfg,
                                                shard_set=sub, bar=bar)
            if feats is not None:
                idx, f, lab = mean_per_sample(idx, feats, labels)
                idx = idx + first
            else:
                idx, f, lab = np.zeros(0, np.int64), None, np.zeros(0, np.int64)
            if part and f is not None:
                from data.atomic import atomic_path
                with atomic_path(part) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, features=f, labels=lab, index=idx)
        if f is not None and len(f):
            out_f.append(f)
            out_l.append(lab)
            out_i.append(idx)
        first += sum(s.samples for s in shards)
    if not out_f:
        raise ValueError(f"{shard_set.root}: no sample could be read")
    return np.concatenate(out_f), np.concatenate(out_l), np.concatenate(out_i)


class _EncoderModel:
    """What ``Predictor`` needs of a trained model, for an encoder in a recipe's model section."""

    def __init__(self, model, data, device, tokens: bool = False):
        import torch
        self.model, self.data, self.device = model.to(device).eval(), data, torch.device(device)
        self.fn = token_features(model) if tokens else model.pooled

    def pooled(self, video):
        import torch
        with torch.no_grad():
            return self.fn(video.to(self.device)).float()


def features(model: str, inputs: list[str], out: str, config: str | None = None,
             overrides=(), device: str | None = None, tokens: bool = False) -> dict:
    """Write the features of ``inputs`` to ``out`` (+ the index CSV); returns a summary."""
    import torch
    from data.manifest import load_shard_set
    from .predict import Predictor, gather, input_count, input_groups
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config:
        from .init import probe_model
        from .config import config_from_cli
        cfg = config_from_cli(config, model, list(overrides))
        # the head is not used, but its size is the probe's (the recipe's data set), so a
        # random encoder (``none``) is drawn exactly as the probe draws it
        classes_n = cfg.model.num_classes
        if not classes_n:
            try:
                classes_n = load_shard_set(cfg.data.shards, "train").num_classes
            except (ValueError, OSError):
                classes_n = 1
        net, _ = probe_model(cfg, classes_n)
        t = _EncoderModel(net, dataclasses.replace(cfg.data, mask="none"), device, tokens)
        classes, in_chans = [], cfg.model.in_chans
    else:
        from .trained import load_trained
        trained = load_trained(model, device, precision="fp32")
        t = _EncoderModel(trained.model, trained.data, device, tokens)
        classes, in_chans = trained.classes, trained.model.cfg.in_chans
    units, failures = gather(inputs, classes, in_chans)
    key = parts_key(t.model, t.data, inputs, tokens)
    parts = out + ".parts"
    if os.path.isdir(parts) and not os.path.isfile(os.path.join(parts, key)):
        shutil.rmtree(parts)              # parts of another command: not this one's
    try:
        os.makedirs(parts, exist_ok=True)
        open(os.path.join(parts, key), "w").close()
        rows, feats = [], []
        from data.progress import Progress
        bar = Progress(input_count(units), "features")
        predictor = Predictor(t, None, features=True)

        def on_result(item, per_view):
            feats.append(per_view.mean(0).numpy()[None])
            rows.append((item.name, None if item.label is None else
                         (classes[item.label] if classes else str(item.label))))
        for n, group in enumerate(input_groups(units)):
            if isinstance(group, list):
                predictor.items(group, on_result, failures.append, bar)
                continue
            ss = load_shard_set(group)
            data = dataclasses.replace(t.data, shards=group)
            f, lab, idx = shard_set_features(t.model, data, ss, t.device, parts, name=f"in{n}",
                                             tokens=tokens, bar=bar)
            feats.append(f)
            rows += [(f"{group}#{int(i)}", ss.classes[int(lb)] if ss.classes else str(int(lb)))
                     for i, lb in zip(idx, lab)]
        for f in failures:
            print(f"finetune.features: skipped {f.name}: {f.reason}", file=sys.stderr)
        if not feats:
            raise ValueError("no input could be read (each is listed above with its reason)")
        bar.close()
        array = np.concatenate(feats).astype(np.float32)
        _write(out, array, rows)
        shutil.rmtree(parts, ignore_errors=True)
    except BaseException:
        # finished parts are kept for the rerun; a parts folder with none is removed
        if not any(n.endswith(".npz") for n in
                   (os.listdir(parts) if os.path.isdir(parts) else [])):
            shutil.rmtree(parts, ignore_errors=True)
        raise
    return {"features": out, "shape": list(array.shape), "failures": len(failures)}


def parts_key(model, data_cfg, inputs: list[str], tokens: bool) -> str:
    """What the saved parts of an interrupted run were computed from, by content: the model's
    weights (a model re-exported in place is another model), the inputs (a prepared set by its
    manifests, a file by its size and modification time), the data settings and ``tokens``.
    Parts under another key are thrown away, never mixed in."""
    import torch
    from data.store import child, is_remote, member, read_if_there
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    seen = []
    for path in inputs:
        if is_remote(path):       # a set in a store: its manifests (each shard's sha256)
            for where in [path] + [child(path, s) for s in ("train", "val", "test")]:
                text = read_if_there(member(where, "manifest.json"))
                if text is not None:
                    seen.append([where, hashlib.sha256(text).hexdigest()])
            continue
        base = path.rpartition(":")[0] if ":" in path and not os.path.exists(path) else path
        manifests = sorted(os.path.join(d, "manifest.json") for d in
                           [base] + [os.path.join(base, s) for s in ("train", "val", "test")]
                           if os.path.isfile(os.path.join(d, "manifest.json")))
        if manifests:
            for m in manifests:
                with open(m, "rb") as f:
                    seen.append([path, hashlib.sha256(f.read()).hexdigest()])
        else:
            st = os.stat(base) if os.path.exists(base) else None
            seen.append([os.path.abspath(path), st and [st.st_size, st.st_mtime_ns]])
    h.update(json.dumps([seen, repr(data_cfg), tokens]).encode())
    return h.hexdigest()[:16]


def _write(out: str, array: np.ndarray, rows: list):
    import csv
    import io
    from data.atomic import atomic_path, write_text_atomic
    if not out.endswith((".npy", ".safetensors")):
        raise ValueError(f"--out {out}: name a .npy or .safetensors file")
    with atomic_path(out) as tmp:
        if out.endswith(".safetensors"):
            import torch
            from safetensors.torch import save_file
            save_file({"features": torch.from_numpy(array)}, tmp)
        else:
            with open(tmp, "wb") as f:
                np.save(f, array)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "input", "label"])
    for i, (name, label) in enumerate(rows):
        w.writerow([i, name, label or ""])
    write_text_atomic(os.path.splitext(out)[0] + ".csv", buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.features", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="fine-tuned model (run or export folder); with --config an "
                                  "encoder (or 'none')")
    ap.add_argument("inputs", nargs="+", metavar="INPUT")
    ap.add_argument("--out", required=True, help="FEATS.npy or FEATS.safetensors")
    ap.add_argument("--config", help="a fine-tuning recipe whose model and data sections take "
                                     "the encoder MODEL (as finetune.probe)")
    ap.add_argument("--tokens", action="store_true",
                    help="the token grid (N, tokens, D) instead of the pooled feature (ViViT)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when there is a GPU)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="section.key=value", help="a recipe override (with --config)")
    args = ap.parse_args(argv)
    from pretrain.runtime.cli import run_command

    def body() -> int:
        res = features(args.model, args.inputs, args.out, args.config, args.overrides,
                       args.device, args.tokens)
        print(f"finetune.features: {' x '.join(map(str, res['shape']))} features in "
              f"{res['features']}, index in {os.path.splitext(res['features'])[0]}.csv",
              file=sys.stderr)
        return 0
    return run_command("finetune.features", body)


if __name__ == "__main__":
    raise SystemExit(main())
