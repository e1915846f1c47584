"""Command line of the prep step. Each sub-command writes shard sets (one per split when the
input has splits) with manifest.json and failures.jsonl; re-running an interrupted command
continues it.

examples:
    python -m data.prep videos /data/my_videos --out shards/mine --split 0.8,0.1,0.1
    python -m data.prep videos kinetics400/train.csv --root /data/k400 --out shards/k400
    python -m data.prep medmnist organmnist3d --size 64 --root ~/medmnist --out shards/organ64
    python -m data.prep synthetic --out shards/synthetic --count 320
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from dataclasses import replace

from ..atomic import FolderInUse, FolderLock
from ..store import StoreError, is_remote, parse_bytes
from . import medmnist as mm
from . import synthetic as syn
from .folder import check_out, staging_for
from .runner import write_shard_set
from .videos import (SPLIT_ALIASES, mark_duplicates, read_kinetics_csv, read_list, read_tree,
                     shuffle_items, video_work)


def _common(p: argparse.ArgumentParser):
    p.add_argument("--out", required=True, help="output folder (train/val/test inside when the "
                                                "input has splits), or s3://bucket/prefix: "
                                                "each shard uploaded when finished, "
                                                "manifest.json last")
    p.add_argument("--staging", help="with --out s3://...: the local folder for the shard "
                                     "being written and the journal's copy (default under "
                                     "~/.cache/tubemae/prep-staging)")
    p.add_argument("--shard-samples", type=int, default=1000, help="max samples per shard")
    p.add_argument("--shard-bytes", type=parse_bytes, default=parse_bytes("1G"),
                   help="max bytes per shard, e.g. 500M, 1G")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="worker processes (0 = in this process)")
    p.add_argument("--verify", action="store_true",
                   help="check a finished set's shards against manifest.json (size, sha256) and "
                        "rebuild from the first damaged one (run with the same arguments)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m data.prep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    v = sub.add_parser("videos", help="videos from a Kinetics CSV, a `path label` list, or a "
                                      "root/<class>/* tree")
    v.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a .csv (Kinetics: label,youtube_id,time_start,time_end,split), a list "
                        "file (`path label` lines; prefix split= to name its split, e.g. "
                        "train=train.txt), or a folder root/<class>/* (or root/<split>/<class>/*)")
    v.add_argument("--root", help="where the videos of a CSV or list live")
    v.add_argument("--classes", help="file with one class name per line (for list inputs)")
    v.add_argument("--seed", type=int, default=0, help="seed of the input shuffle")
    v.add_argument("--no-shuffle", action="store_true", help="keep the input order")
    v.add_argument("--short-side", type=int, default=None,
                   help="transcode to H.264 with this short side (e.g. 320): much faster "
                        "loading later")
    v.add_argument("--gop", type=int, default=16, help="keyframe interval when transcoding")
    v.add_argument("--crf", type=int, default=23, help="H.264 quality when transcoding")
    v.add_argument("--fast-decode", action=argparse.BooleanOptionalAction, default=True,
                   help="when transcoding, encode for fast decoding (x264 --tune fastdecode: "
                        "no CABAC, no deblocking): about half the decode CPU per frame for ~9%% "
                        "more bytes and the same picture within 0.3 dB PSNR (on by default)")
    v.add_argument("--transcode", action="store_true",
                   help="transcode without resizing (implied by --short-side, --frame-step)")
    v.add_argument("--frame-step", type=int, default=1,
                   help="keep every N-th frame when transcoding (e.g. 4 for pre-training at "
                        "stride 4: 4x fewer frames to decode). data.stride stays in source "
                        "frames and must be a multiple of N; clip starts fall on every N-th "
                        "source frame")
    v.add_argument("--split", metavar="TRAIN,VAL,TEST",
                   help="split inputs that have no split of their own (a root/<class>/* tree, "
                        "one list) into train/val/test by these fractions, e.g. 0.8,0.1,0.1: "
                        "per class (stratified), seeded by --seed, the same on every run")
    _common(v)

    m = sub.add_parser("medmnist", help="official MedMNIST3D npz -> one shard set per split")
    m.add_argument("flag", help=f"one of {', '.join(mm.CLASSES)}, or the path of a "
                                "MedMNIST-format npz file (train/val/test _images and _labels)")
    m.add_argument("--classes", help="file with one class name per line (an npz of your own; "
                                     "default class_0, class_1, ...)")
    m.add_argument("--size", type=int, default=28, choices=(28, 64))
    m.add_argument("--root", default=".", help="folder holding the npz files")
    m.add_argument("--download", action="store_true", help="fetch the npz when missing")
    m.add_argument("--url", help=argparse.SUPPRESS)  # tests point this at a local file
    _common(m)

    s = sub.add_parser("synthetic", help="the embedded demo set (moving shapes, class = motion)")
    s.add_argument("--count", type=int, default=320, help="clips in all splits together")
    s.add_argument("--num-classes", type=int, default=4, help=f"2..{len(syn.CLASSES)}")
    s.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    s.add_argument("--frames", type=int, default=40, help="frames per clip")
    s.add_argument("--fps", type=float, default=25.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--pool", type=int, default=0,
                   help="label-efficiency layout: an unlabeled pre-training pool of this many "
                        "clips (out/pool) plus train/val/test of --*-per-class clips per class; "
                        "--count is then unused")
    s.add_argument("--train-per-class", type=int, default=128)
    s.add_argument("--val-per-class", type=int, default=16)
    s.add_argument("--test-per-class", type=int, default=100)
    s.add_argument("--hard", action="store_true",
                   help="nuisance the class does not depend on: camera shake and a speed "
                        "spread around each class's speed")
    s.add_argument("--background", choices=("flat", "moving"), default="flat",
                   help="flat: a plain colour with static clutter; moving: plane waves over "
                        "it and the whole background drifting in a random direction, the same "
                        "for every class (content at every pixel that pre-training can predict)")
    _common(s)

    k = sub.add_parser("subset", help="a k-shot copy of a prepared set (k train samples per "
                                      "class; val and test linked)")
    k.add_argument("source", help="a prepared folder with train/val/test, or such a set in a "
                                  "store (s3://, https://, pipe:)")
    k.add_argument("--per-class", type=int, required=True, help="training samples per class")
    k.add_argument("--seed", type=int, default=0, help="which samples (nested across k)")
    k.add_argument("--out", required=True)
    return ap


def _split_lists(args) -> dict:
    """Read every video input; returns {split or None: [items]} and the class names."""
    classes_from_file = None
    if args.classes:
        with open(args.classes) as f:
            classes_from_file = [line.strip() for line in f if line.strip()]
    items, classes = [], None
    for spec in args.inputs:
        split, _, path = spec.rpartition("=") if "=" in spec and not os.path.exists(spec) else \
            ("", "", spec)
        split = SPLIT_ALIASES.get(split.lower()) if split else None
        if not os.path.exists(path):
            raise FileNotFoundError(f"input {path} not found")
        if os.path.isdir(path):
            found, classes = read_tree(path)
            items += found
        elif path.lower().endswith(".csv"):
            found, classes = read_kinetics_csv(path, args.root or os.path.dirname(path))
            items += found
        else:
            items += read_list(path, args.root, split, classes_from_file)
    if classes is None:
        top = max((it.label for it in items), default=-1)
        classes = classes_from_file or [str(i) for i in range(top + 1)]
    groups = defaultdict(list)
    for it in mark_duplicates(items):
        groups[it.split].append(it)
    if None in groups and len(groups) > 1:
        raise ValueError("mix of inputs with and without a split; prefix each list with its "
                         "split, e.g. train=train.txt val=val.txt")
    return groups, classes


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(not 0 <= p <= 1 for p in parts) or abs(sum(parts) - 1) > 1e-6 \
            or parts[0] == 0:
        raise ValueError(f"--split {text}: give three fractions train,val,test that add up to "
                         f"1, e.g. 0.8,0.1,0.1")
    return parts


def split_by_class(items: list, fractions: tuple, seed: int) -> dict:
    """{split: items}: each class's inputs shuffled with ``seed`` and cut by ``fractions``
    (val and test rounded, train the rest), so every class is in every split it can be; the
    inputs that cannot be used are listed with train."""
    import numpy as np
    by_class: dict = defaultdict(list)
    for it in items:
        by_class[it.label].append(it)
    out = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda it: it.path)
        if label < 0:
            out["train"] += group
            continue
        rng = np.random.default_rng([seed, label])
        group = [group[i] for i in rng.permutation(len(group))]
        n_val, n_test = (int(round(len(group) * f)) for f in fractions[1:])
        n_val = min(n_val, len(group) - 1)
        n_test = min(n_test, len(group) - 1 - n_val)
        out["val"] += group[:n_val]
        out["test"] += group[n_val:n_val + n_test]
        out["train"] += group[n_val + n_test:]
    return {k: [replace(it, split=k) for it in v] for k, v in out.items() if v}


def cmd_videos(args) -> int:
    groups, classes = _split_lists(args)
    seed = None if args.no_shuffle else args.seed
    if args.split:
        fractions = parse_fractions(args.split)
        if set(groups) != {None}:
            raise ValueError(f"--split {args.split}: the inputs have splits of their own "
                             f"({', '.join(sorted(str(k) for k in groups if k))}); drop --split")
        groups = split_by_class(groups[None], fractions, args.seed)
    if args.frame_step < 1:
        raise ValueError(f"--frame-step must be >= 1, got {args.frame_step}")
    transcoding = args.transcode or args.short_side is not None or args.frame_step > 1
    options = {"seed": seed, "short_side": args.short_side, "transcode": transcoding,
               "gop": args.gop if transcoding else None, "crf": args.crf if transcoding else None,
               "shard_samples": args.shard_samples, "shard_bytes": args.shard_bytes}
    if args.frame_step > 1:  # only when used, so earlier sets keep their options (resume)
        options["frame_step"] = args.frame_step
    tune = "fastdecode" if transcoding and args.fast_decode else None
    if tune:
        options["tune"] = tune
    if args.split:
        options["split"] = list(parse_fractions(args.split))
        options["split_seed"] = args.seed
    work = video_work(args.short_side, args.gop, args.crf, transcoding, args.frame_step, tune)
    for split, items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ordered = list(enumerate(shuffle_items(items, seed)))
        out = os.path.join(args.out, split) if split else args.out
        write_shard_set(out, "video", classes, options, ordered, work,
                        source_of=lambda it: it[1].path, workers=args.workers,
                        max_samples=args.shard_samples, max_bytes=args.shard_bytes, split=split,
                        verify=args.verify)
    return 0


def cmd_medmnist(args) -> int:
    if args.flag.endswith(".npz"):
        path = args.flag
    else:
        path = mm.locate(args.flag, args.size, args.root, fetch=args.download, url=args.url)
    classes = None
    if args.classes:
        with open(args.classes) as f:
            classes = [line.strip() for line in f if line.strip()]
        if not classes:
            raise ValueError(f"--classes {args.classes} names no class")
    mm.shards_from_npz(path, args.out, args.shard_samples, args.shard_bytes, args.verify,
                       classes)
    return 0


def cmd_synthetic(args) -> int:
    classes = syn.class_names(args.num_classes)
    if args.size % 2 or args.size < 16:
        raise ValueError(f"--size must be even and >= 16, got {args.size}")
    nuisance = syn.HARD if args.hard else syn.NONE
    if args.background == "moving":
        nuisance = replace(nuisance, waves=syn.MOVING.waves, drift=syn.MOVING.drift)
    options = {"count": args.count, "num_classes": args.num_classes, "size": args.size,
               "frames": args.frames, "fps": args.fps, "seed": args.seed,
               "shard_samples": args.shard_samples, "shard_bytes": args.shard_bytes,
               "hard": args.hard}
    if args.background != "flat":   # only when used, so earlier sets keep their options
        options["background"] = args.background
    if args.pool:
        options.update(pool=args.pool, train_per_class=args.train_per_class,
                       val_per_class=args.val_per_class, test_per_class=args.test_per_class)
        del options["count"]
        layout = syn.pool_layout(args.pool, args.num_classes, args.train_per_class,
                                 args.val_per_class, args.test_per_class)
    else:
        layout = {split: [i for i in range(args.count) if syn.split_of(i, args.count) == split]
                  for split in ("train", "val", "test")}
    for split, idx in layout.items():
        idx = list(idx)
        work = syn.synthetic_work(args.seed, args.num_classes, args.size, args.frames, args.fps,
                                  nuisance, labeled=split != "pool")
        write_shard_set(os.path.join(args.out, split), "video",
                        classes if split != "pool" else [], options, idx, work,
                        source_of=lambda i: f"synthetic:{args.seed}/{i}", workers=args.workers,
                        max_samples=args.shard_samples, max_bytes=args.shard_bytes,
                        split=split, verify=args.verify)
    return 0


def cmd_subset(args) -> int:
    from .subset import make_subset
    if is_remote(args.out):
        raise ValueError("subset writes a local folder (its val/ and test/ are links); make "
                         "the subset locally, then copy it to the store")
    make_subset(args.source, args.out, args.per_class, args.seed)
    return 0


def _write_failure(args, e: OSError) -> str:
    """One line for a write that failed under --out; the shard being written (``.tmp``, never
    a finished one) is removed so it does not hold the space."""
    import shutil
    out = getattr(args, "out", None) or "."
    if is_remote(out):                  # what fills up is the local staging folder
        out = staging_for(out)
    for root, _, files in os.walk(out):
        for name in files:
            if name.endswith(".tar.tmp"):
                try:
                    os.remove(os.path.join(root, name))
                except OSError:
                    pass
    try:
        free = f"{shutil.disk_usage(out).free / 1e6:.0f} MB are free there"
    except OSError:
        free = "its free space is unknown"
    return (f"could not write under {out} ({e.strerror or e}; {free}); make room or choose "
            f"a folder you can write to, then run the same command: finished shards are kept")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    commands = {"videos": cmd_videos, "medmnist": cmd_medmnist, "synthetic": cmd_synthetic,
                "subset": cmd_subset}
    lock = None
    try:
        if getattr(args, "staging", None):
            os.environ["TUBEMAE_STAGING"] = os.path.abspath(args.staging)
        if getattr(args, "out", None):     # one prep per output folder at a time
            if is_remote(check_out(args.out)):     # refuses what prep cannot write to
                where = staging_for(args.out)
            else:
                where = args.out
            os.makedirs(where, exist_ok=True)
            lock = FolderLock(where)
        return commands[args.command](args)
    except StoreError as e:      # a store that keeps failing or refuses: finished shards stay
        print(f"data.prep: error: {e}", file=sys.stderr)
        return 2
    except FolderInUse as e:
        print(f"data.prep: error: {e}; wait for it to finish, or choose another --out",
              file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"data.prep: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:       # a full disk, a read-only or unwritable --out
        print(f"data.prep: error: {_write_failure(args, e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data.prep: interrupted; finished shards are kept, re-run the same command to "
              "continue", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()
