"""`python -m finetune.predict MODEL INPUT... [--top-k 5] [--out preds.jsonl|preds.csv]`:
class probabilities for new videos or volumes from a trained model.

    python -m finetune.predict runs/quickstart/finetune clip1.mp4 clips/ --top-k 3
    python -m finetune.predict runs/quickstart/model runs/quickstart/data/test --out preds.csv

MODEL: a fine-tuning run folder (its best checkpoint) or an export of one
(``python -m finetune.export RUN``). INPUT, any number of:
  a video file (.mp4 .webm .mkv .avi .mov .m4v; a phone's display rotation is applied);
  a folder (every video and .npy under it, recursively);
  a list file (one path per line, optionally followed by its class name or number);
  a prepared shard set (one split folder, e.g. DATA/test): its labels are known;
  MedMNIST-layout volumes: a .npy (D, H, W[, C]) or a stack (N, D, H, W), or FILE.npz:SPLIT.
Each input is seen as the model's own evaluation saw its test split: the same frames, stride
and ``clips x crops`` views, softmax averaged over the views. Prints a table (input, the top-k
classes with probabilities) and, where the inputs carry labels, top-1/top-5 accuracy (volumes:
ACC/AUC too); ``--out`` writes one JSON line (or CSV row) per input. Inputs that cannot be read
are listed with the reason and skipped; the exit status is non-zero only when nothing could be
predicted.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

LIST_EXTS = ("txt", "lst", "list")


@dataclass
class Item:
    name: str
    kind: str                   # video | volume
    load: object                # () -> bytes (video) or ndarray (volume)
    label: int | None = None


@dataclass
class Failure:
    name: str
    reason: str


def _label_of(text: str | None, classes: list[str]) -> int | None:
    if text is None:
        return None
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise ValueError(f"label {text!r} is not one of the model's classes ({', '.join(classes)})")


def _file_loader(path: str):
    def load():
        with open(path, "rb") as f:
            return f.read()
    return load


def _volumes_from_npy(path: str, in_chans: int) -> list[Item]:
    import numpy as np
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == in_chans and in_chans > 1):
        return [Item(path, "volume", lambda: np.asarray(arr))]
    if arr.ndim == 4 and in_chans == 1:
        return [Item(f"{path}#{i}", "volume", lambda i=i: np.asarray(arr[i]))
                for i in range(arr.shape[0])]
    raise ValueError(f"{path}: a volume of shape {tuple(arr.shape)}; the model takes (D, H, W) "
                     f"volumes with {in_chans} channel(s), or a stack (N, D, H, W)")


def _volumes_from_npz(spec: str, classes: list[str]) -> list[Item]:
    import numpy as np

    from data.prep.medmnist import class_numbers
    path, _, split = spec.rpartition(":") if not spec.endswith(".npz") else (spec, "", "")
    with np.load(path, allow_pickle=False) as z:
        have = sorted({k.rsplit("_", 1)[0] for k in z.files if k.endswith("_images")})
        if not split:
            raise ValueError(f"{path}: name the split to predict, e.g. {path}:"
                             f"{have[-1] if have else 'test'} (it holds {', '.join(have) or 'no'}"
                             f" *_images arrays)")
        if f"{split}_images" not in z.files:
            raise ValueError(f"{path} has no split {split!r} (no {split}_images); it holds "
                             f"{', '.join(have) or 'none'}")
        images = z[f"{split}_images"]
        labels = (class_numbers(z[f"{split}_labels"], f"{path}: {split}_labels")
                  if f"{split}_labels" in z.files else None)
    if images.ndim == 5 and images.shape[1] == 1 and images.shape[-1] not in (1, 3):
        images = images[:, 0]                       # (N, 1, D, H, W): one channel
    if labels is not None and len(labels) and labels.max() >= len(classes):
        labels = None                     # not this model's classes: predict without scoring
    return [Item(f"{path}:{split}#{i}", "volume", lambda i=i: images[i],
                 None if labels is None else int(labels[i])) for i in range(len(images))]


def _is_prepared(path: str) -> bool:
    from data.store import is_remote, member, read_if_there
    if is_remote(path):
        return read_if_there(member(path, "manifest.json")) is not None
    return os.path.isfile(os.path.join(path, "manifest.json"))


def first_samples(folder: str, limit: int) -> list[Item]:
    """The first ``limit`` samples of a prepared split as loose items (label known)."""
    from data.manifest import load_shard_set
    from data.shard_reader import decode_sample, leading_samples
    items = []
    for raw in leading_samples(load_shard_set(folder), limit):
        kind, payload, label = decode_sample(raw)
        items.append(Item(f"{folder}#{raw['__key__']}", kind, lambda p=payload: p, label))
    return items


def gather(inputs: list[str], classes: list[str], in_chans: int, limit: int | None = None
           ) -> tuple[list, list[Failure]]:
    """The inputs as units of work: prepared shard sets (paths; their first ``limit`` samples
    as loose items when given) and loose items, in the order given; the inputs that cannot be
    used, with why."""
    from data.decode import VIDEO_EXTS
    from data.manifest import has_splits
    from data.store import StoreError, check_url, child, is_remote
    units, failures = [], []

    def add_file(path: str, label=None):
        ext = os.path.splitext(path)[1][1:].lower()
        if ext in VIDEO_EXTS:
            units.append(Item(path, "video", _file_loader(path), label))
        elif ext == "npy":
            units.extend(_volumes_from_npy(path, in_chans))
        elif ext == "npz" or ".npz:" in path:
            units.extend(_volumes_from_npz(path, classes))
        else:
            raise ValueError(f"not a video, a volume or a list file (extension '.{ext}')")

    for spec in inputs:
        path = spec.split(".npz:", 1)[0] + ".npz" if ".npz:" in spec else spec
        try:
            if is_remote(spec):         # a prepared split in a store (data/store.py)
                check_url(spec, "an input")
                if _is_prepared(spec):
                    units.extend(first_samples(spec, limit) if limit else [spec])
                elif has_splits(spec):
                    raise ValueError(f"a prepared set with splits; give one split, e.g. "
                                     f"{child(spec, 'test')}")
                else:
                    raise ValueError("not a prepared set in the store (no manifest.json there)")
                continue
            if not os.path.exists(path):
                raise ValueError("not found")
            if os.path.isdir(path):
                if _is_prepared(path):
                    if limit:
                        units.extend(first_samples(path, limit))
                    else:
                        units.append(path)
                    continue
                if has_splits(path):
                    raise ValueError(f"a prepared set with splits; give one split folder, e.g. "
                                     f"{os.path.join(path, 'test')}")
                found = sorted(os.path.join(d, f) for d, _, files in os.walk(path)
                               for f in files if os.path.splitext(f)[1][1:].lower() in
                               (*VIDEO_EXTS, "npy"))
                if not found:
                    raise ValueError(f"a folder with no video or .npy volume in it (looked for "
                                     f"{', '.join(VIDEO_EXTS)}, npy)")
                for f in found:
                    add_file(f)
            elif os.path.splitext(path)[1][1:].lower() in LIST_EXTS:
                base = os.path.dirname(os.path.abspath(path))
                with open(path) as f:
                    for line in f:
                        line = line.strip()
                        if not line or line.startswith("#"):
                            continue
                        target, label = os.path.join(base, line), None
                        try:
                            if not os.path.exists(target) and len(line.split()) > 1:
                                path_part, label_text = line.rsplit(maxsplit=1)
                                target = os.path.join(base, path_part)
                                label = _label_of(label_text, classes)
                            if not os.path.isfile(target):
                                raise ValueError("not found")
                            add_file(target, label)
                        except (ValueError, OSError) as e:
                            failures.append(Failure(target, str(e)))
            else:
                add_file(spec)
        except StoreError:
            raise                  # the store is down or refuses: not this input's fault
        except (ValueError, OSError) as e:
            failures.append(Failure(spec, str(e)))
    return units, failures


def input_count(units: list) -> int:
    """How many inputs ``gather``'s units hold: a loose item is one, a prepared set its
    samples (from its manifest); what a progress bar counts to."""
    from data.manifest import load_shard_set
    return sum(1 if isinstance(u, Item) else load_shard_set(u).num_samples for u in units)


def _check_volume(item: Item, vol, in_chans: int):
    chans = 1 if vol.ndim == 3 else vol.shape[-1] if vol.ndim == 4 else None
    if chans != in_chans:
        raise ValueError(f"a volume of shape {tuple(vol.shape)}; the model takes (D, H, W"
                         f"{'' if in_chans == 1 else f', {in_chans}'}) volumes with {in_chans} "
                         f"channel(s)")


class Predictor:
    """Batches the views of many inputs through one model; ``scores`` per input are the
    softmax of each view's logits averaged over its views (as the evaluation does)."""

    def __init__(self, trained, batch_size: int | None = None, features: bool = False):
        self.t = trained
        self.batch = batch_size or trained.data.batch_size
        self.features = features

    def _run(self, video):
        return self.t.pooled(video) if self.features else self.t.logits(video)

    def items(self, items: list[Item], on_result, on_failure, bar=None):
        """Views of each loose item, batched; calls ``on_result(item, per-view outputs)``."""
        import torch
        from data.clips import eval_views
        from data.decode import VideoDecodeError
        pending, owners, counts = [], [], {}
        outputs: dict = {}

        def flush():
            if not pending:
                return
            out = self._run(torch.stack(pending)).cpu()
            for o, row in zip(owners, out):
                outputs.setdefault(o, []).append(row)
            pending.clear()
            owners.clear()
            for o in list(outputs):
                if len(outputs[o]) == counts[o]:
                    on_result(items[o], torch.stack(outputs.pop(o)))
        in_chans = self.t.model.cfg.in_chans
        for n, item in enumerate(items):
            try:
                payload = item.load()
                if item.kind == "volume":
                    _check_volume(item, payload, in_chans)
                    views = eval_views("volume", payload, self.t.data, 1)
                else:
                    views = eval_views("video", payload, self.t.data, self.t.data.stride)
            except (VideoDecodeError, ValueError, OSError) as e:
                on_failure(Failure(item.name, str(e)))
                if bar is not None:
                    bar.update(1)
                continue
            counts[n] = len(views)
            for v in views:
                pending.append(v)
                owners.append(n)
                if len(pending) >= self.batch:
                    flush()
            if bar is not None:
                bar.update(1)
        flush()

    def shard_set(self, folder: str, bar=None):
        """(sample index, per-view outputs, labels) of a prepared split, made exactly as the
        run's test evaluation made them (same stream, batches and precision); ``bar`` (a
        ``Progress``) counts its samples."""
        import dataclasses

        from data.manifest import load_shard_set
        from .evaluate import stream_outputs
        ss = load_shard_set(folder)
        cfg = dataclasses.replace(self.t.data, shards=folder, batch_size=self.batch)
        return (ss,) + stream_outputs(self._run, cfg, shard_set=ss, bar=bar)


def input_groups(units: list) -> Iterator[list[Item] | str]:
    """The one input loop of predict and features: ``gather``'s units in their order, each run
    of loose inputs as one list (their views are batched together), each prepared set alone."""
    loose: list[Item] = []
    for u in units:
        if isinstance(u, Item):
            loose.append(u)
            continue
        if loose:
            yield loose
            loose = []
        yield u
    if loose:
        yield loose


def predict(model: str, inputs: list[str], top_k: int = 5, device: str | None = None,
            batch_size: int | None = None, workers: int | None = None,
            progress: bool | None = None, limit: int | None = None) -> dict:
    """Predictions for ``inputs``: {'rows': [...], 'failures': [...], 'metrics': {...} or
    None}. Each row: input, label (when known), top_k [{label, score}]."""
    import dataclasses

    import numpy as np
    import torch
    from data.progress import Progress
    from .evaluate import aggregate_views, summarize
    from .trained import load_trained
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t = load_trained(model, device)
    if workers is not None:
        t.data = dataclasses.replace(t.data, num_workers=workers)
    classes = t.classes
    k = max(1, min(top_k, len(classes)))
    units, failures = gather(inputs, classes, t.model.cfg.in_chans, limit)
    rows: list[dict] = []
    scored = {"index": [], "logits": [], "labels": []}
    next_index = [0]              # sample numbers of later groups start after earlier ones

    def row(name: str, scores: np.ndarray, label: int | None) -> dict:
        top = np.argsort(-scores)[:k]
        return {"input": name, "label": None if label is None else classes[label],
                "top_k": [{"label": classes[i], "score": float(scores[i])} for i in top]}

    def add_scored(logits: np.ndarray, labels: np.ndarray, index: np.ndarray):
        scored["index"].append(index + next_index[0])
        next_index[0] += int(index.max()) + 1
        scored["logits"].append(logits)
        scored["labels"].append(labels)

    p = Predictor(t, batch_size)
    bar = Progress(input_count(units), "predict", show=progress)

    def on_result(item: Item, logits):
        views = np.zeros(len(logits), np.int64)     # one sample: its views averaged
        _, probs, _ = aggregate_views(views, logits.numpy(), views)
        rows.append(row(item.name, probs[0], item.label))
        if item.label is not None:
            add_scored(logits.numpy(), np.full(len(logits), item.label),
                       np.full(len(logits), len(rows)))
    for group in input_groups(units):
        if isinstance(group, list):
            p.items(group, on_result, failures.append, bar)
            continue
        ss, idx, logits, labels = p.shard_set(group, bar)
        if logits is None:
            failures.append(Failure(group, "no sample of the set could be read"))
            continue
        sample_idx, scores, lab = aggregate_views(idx, logits, labels)
        for i, s, lb in zip(sample_idx, scores, lab):
            rows.append(row(f"{group}#{int(i)}", s, int(lb)))
        add_scored(logits, labels, idx)
    bar.close()
    metrics = None
    if scored["labels"]:
        m = summarize(t.kind, np.concatenate(scored["index"]), np.concatenate(scored["logits"]),
                      np.concatenate(scored["labels"]))
        metrics = {key: m[key] for key in ("samples", "acc", "auc", "top1", "top5")}
    return {"rows": rows, "failures": [f.__dict__ for f in failures], "metrics": metrics,
            "model": t.meta.get("source", {}), "kind": t.kind}


def write_rows(path: str, rows: list[dict]):
    from data.atomic import write_text_atomic
    if path.lower().endswith(".csv"):
        import io
        buf = io.StringIO()
        k = max((len(r["top_k"]) for r in rows), default=0)
        w = csv.writer(buf)
        w.writerow(["input", "label"] + [c for i in range(1, k + 1)
                                         for c in (f"top{i}", f"score{i}")])
        for r in rows:
            w.writerow([r["input"], r["label"] or ""] + [v for t in r["top_k"]
                                                         for v in (t["label"],
                                                                   f"{t['score']:.6f}")])
        text = buf.getvalue()
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    write_text_atomic(path, text)


def table(rows: list[dict], limit: int = 50) -> str:
    width = min(60, max((len(r["input"]) for r in rows), default=5))
    lines = [f"{'input':<{width}}  {'label':<12}  top-k (probability)"]
    for r in rows[:limit]:
        name = r["input"] if len(r["input"]) <= width else "..." + r["input"][-width + 3:]
        top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"])
        lines.append(f"{name:<{width}}  {(r['label'] or '-'):<12}  {top}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more (all of them with --out FILE)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="fine-tuning run folder or exported model folder")
    ap.add_argument("inputs", nargs="+", metavar="INPUT")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--out", help="write every prediction here (.jsonl, or .csv)")
    ap.add_argument("--limit", type=int, help="only the first N samples of each prepared set")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when there is a GPU)")
    ap.add_argument("--batch-size", type=int, help="views per forward pass (default: the "
                                                   "run's data.batch_size)")
    ap.add_argument("--workers", type=int, help="loader workers for prepared sets (default: "
                                                "the run's data.num_workers)")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top-k takes a positive count")
    from pretrain.runtime.cli import run_command

    def body() -> int:
        res = predict(args.model, args.inputs, args.top_k, args.device, args.batch_size,
                      args.workers, limit=args.limit)
        for f in res["failures"]:
            print(f"finetune.predict: skipped {f['name']}: {f['reason']}", file=sys.stderr)
        if not res["rows"]:
            print("finetune.predict: error: nothing could be predicted (every input is listed "
                  "above with its reason)", file=sys.stderr)
            return 1
        print(table(res["rows"]))
        m = res["metrics"]
        if m:
            extra = f" acc {m['acc']:.4f} auc {m['auc']:.4f}" if res["kind"] == "volume" else ""
            print(f"accuracy over {m['samples']} labelled inputs: top-1 {m['top1']:.4f} top-5 "
                  f"{m['top5']:.4f}{extra}")
        if args.out:
            write_rows(args.out, res["rows"])
            if m:
                from data.atomic import write_text_atomic
                write_text_atomic(os.path.splitext(args.out)[0] + ".metrics.json",
                                  json.dumps(m, indent=1))
            print(f"finetune.predict: {len(res['rows'])} predictions written to {args.out}",
                  file=sys.stderr)
        return 0
    return run_command("finetune.predict", body)


if __name__ == "__main__":
    raise SystemExit(main())
