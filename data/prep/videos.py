"""Video inputs -> shards: a Kinetics CSV, a `path label` list, or a `root/<class>/*` tree."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..decode import VIDEO_EXTS, VideoDecodeError, probe_video, transcode
from .shards import encode_sample, safe_key

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validate": "val", "validation": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class VideoItem:
    path: str
    label: int
    label_name: str
    split: str | None
    stem: str
    window: tuple | None = None   # Kinetics (time_start, time_end) s, where the file may be whole


def _norm_split(name: str, where: str) -> str:
    try:
        return SPLIT_ALIASES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"{where}: unknown split {name!r}; use train, val or test") from None


def _index_videos(root: str) -> dict:
    """stem -> path of every video file under root (for resolving Kinetics ids)."""
    index = {}
    for d, _, files in os.walk(root):
        for f in files:
            stem, ext = os.path.splitext(f)
            if ext[1:].lower() in VIDEO_EXTS:
                index.setdefault(stem, os.path.join(d, f))
    return index


def read_kinetics_csv(csv_path: str, root: str) -> tuple[list[VideoItem], list[str]]:
    """Rows `label,youtube_id,time_start,time_end,split`; files found under root by the usual
    names `{id}_{start:06d}_{end:06d}.ext` (a cut clip) or `{id}.ext`. A file named by the id
    alone may be the whole video: it carries the row's window, and prep trims it when the file
    is longer than the window (``process_video``). Missing files stay as items whose path does
    not exist, so they are reported as failures."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end", "split"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{csv_path}: expected a header with columns {sorted(need)}")
    classes = sorted({r["label"] for r in rows})
    index = _index_videos(root)
    items = []
    for r in rows:
        yid, start, end = r["youtube_id"], float(r["time_start"]), float(r["time_end"])
        t0, t1 = int(start), int(end)
        stem = f"{yid}_{t0:06d}_{t1:06d}"
        cut = index.get(stem)
        path = cut or index.get(yid) or os.path.join(root, stem + ".mp4")
        items.append(VideoItem(path, classes.index(r["label"]), r["label"],
                               _norm_split(r["split"], csv_path), stem,
                               None if cut or end <= start else (start, end)))
    return items, classes


def read_list(list_path: str, root: str | None, split: str | None,
              classes: list[str] | None) -> list[VideoItem]:
    """Lines `path label` (label an integer); relative paths resolve against root, else the
    list's folder."""
    base = root or os.path.dirname(os.path.abspath(list_path))
    items = []
    with open(list_path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                path, label = line.rsplit(maxsplit=1)
                label = int(label)
            except ValueError:
                raise ValueError(f"{list_path}:{n}: expected `path label`, got {line!r}") from None
            name = classes[label] if classes and label < len(classes) else str(label)
            stem = os.path.splitext(os.path.basename(path))[0]
            items.append(VideoItem(os.path.join(base, path), label, name, split, stem))
    return items


def read_tree(root: str) -> tuple[list[VideoItem], list[str]]:
    """`root/<class>/*` or `root/<split>/<class>/*`; class names are the sorted folder names."""
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    split_dirs = [d for d in subdirs if d.lower() in SPLIT_ALIASES]
    parts = ([(os.path.join(root, d), _norm_split(d, root)) for d in split_dirs]
             if split_dirs and len(split_dirs) == len(subdirs) else [(root, None)])
    class_dirs = {}
    for folder, split in parts:
        for c in sorted(os.listdir(folder)):
            if os.path.isdir(os.path.join(folder, c)):
                class_dirs.setdefault(c, []).append((os.path.join(folder, c), split))
    classes = sorted(class_dirs)
    if not classes:
        raise ValueError(f"{root}: no class folders found (expected root/<class>/<video>)")
    items = []
    for label, c in enumerate(classes):
        for folder, split in class_dirs[c]:
            for f in sorted(os.listdir(folder)):
                p = os.path.join(folder, f)
                if os.path.isfile(p):
                    items.append(VideoItem(p, label, c, split, os.path.splitext(f)[0]))
    return items, classes


def process_video(item_and_index, short_side: int | None, gop: int, crf: int,
                  transcode_video: bool, frame_step: int = 1) -> dict:
    """Read, check (and optionally transcode) one video -> a shard sample or a failure."""
    index, item = item_and_index
    ext = os.path.splitext(item.path)[1][1:].lower()
    if not os.path.exists(item.path):
        return {"ok": False, "reason": "file not found"}
    if ext not in VIDEO_EXTS:
        return {"ok": False, "reason": f"not a video file (extension '.{ext}'); "
                                       f"expected one of {', '.join(VIDEO_EXTS)}"}
    with open(item.path, "rb") as f:
        data = f.read()
    window = None
    try:
        info = probe_video(data)
        if item.window is not None and info.fps > 0:
            # a whole video (longer than the row's window, with a second of slack): trim it
            if info.num_frames / info.fps > item.window[1] - item.window[0] + 1.0:
                window = item.window
        if transcode_video or window:
            data, info = transcode(data, short_side, gop=gop, crf=crf, frame_step=frame_step,
                                   window=window)
            ext = "mp4"
    except VideoDecodeError as e:
        return {"ok": False, "reason": str(e)}
    meta = {"label": item.label, "label_name": item.label_name, "source": item.path,
            "num_frames": info.num_frames, "fps": info.fps, "width": info.width,
            "height": info.height}
    if frame_step > 1:
        meta["frame_step"] = frame_step  # stored frame i is source frame i * frame_step
    if window:
        meta["window"] = list(window)    # trimmed from the whole video to [start, end) s
    return {"ok": True, "sample": encode_sample(safe_key(index, item.stem), ext, data, meta)}


def video_work(short_side: int | None, gop: int, crf: int, transcode_video: bool,
               frame_step: int = 1):
    return partial(process_video, short_side=short_side, gop=gop, crf=crf,
                   transcode_video=transcode_video, frame_step=frame_step)


def shuffle_items(items: list, seed: int | None) -> list:
    """Seeded shuffle of the input order (None keeps it)."""
    if seed is None:
        return list(items)
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]
