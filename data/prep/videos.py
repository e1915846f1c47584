"""Video inputs -> shards: a Kinetics CSV, a `path label` list, or a `root/<class>/*` tree."""
from __future__ import annotations

import csv
import errno
import hashlib
import os
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from ..decode import (VIDEO_EXTS, VideoDecodeError, display_rotation, pixel_format,
                      probe_video, transcode)
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
    problem: str | None = None    # why this entry cannot be used, when the scan already knows


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


# Folders that archive tools, notebooks and file managers leave behind: never a class or a
# split (hidden folders, ".xxx", are passed over the same way).
STRAY_DIRS = {"__MACOSX", "@eaDir", ".ipynb_checkpoints", "$RECYCLE.BIN",
              "System Volume Information"}


def _stray(name: str) -> bool:
    return name in STRAY_DIRS or name.startswith(".")


def _listing(folder: str) -> tuple[list[str], str | None]:
    try:
        return sorted(os.listdir(folder)), None
    except OSError as e:
        return [], f"an unreadable folder ({e.strerror or e})"


def read_tree(root: str) -> tuple[list[VideoItem], list[str]]:
    """`root/<class>/*` or `root/<split>/<class>/*`; class names are the sorted names of the
    folders that hold at least one video file. Every entry that is not a usable video is kept
    as an item with its ``problem``, so prep lists it in failures.jsonl: links that point
    nowhere or loop, folders inside a class folder, stray folders left by archive tools,
    unreadable folders, and class folders with no video (no class is made from them). Split
    folders beside other folders are an error naming both."""
    names, why = _listing(root)
    if why:
        raise ValueError(f"{root}: {why}")
    dirs = [d for d in names if os.path.isdir(os.path.join(root, d))]
    problems = [VideoItem(os.path.join(root, d), -1, "", None, d,
                          problem="a stray folder (left by an archive tool or a program), not "
                                  "a class") for d in dirs if _stray(d)]
    dirs = [d for d in dirs if not _stray(d)]
    split_dirs = [d for d in dirs if d.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(dirs):
        others = [d for d in dirs if d not in split_dirs]
        raise ValueError(f"{root} holds split folders ({', '.join(split_dirs)}) beside other "
                         f"folders ({', '.join(others)}); put every class folder inside a split "
                         f"folder (root/<split>/<class>/...), or use no split folders")
    parts = ([(os.path.join(root, d), _norm_split(d, root)) for d in split_dirs]
             if split_dirs else [(root, None)])
    class_dirs: dict = {}
    for folder, split in parts:
        entries, why = _listing(folder)
        if why:
            problems.append(VideoItem(folder, -1, "", split, os.path.basename(folder),
                                      problem=why))
        for c in entries:
            path = os.path.join(folder, c)
            if not os.path.isdir(path):
                continue                   # a loose file beside the class folders
            if _stray(c):
                problems.append(VideoItem(path, -1, "", split, c, problem=(
                    "a stray folder (left by an archive tool or a program), not a class")))
            else:
                class_dirs.setdefault(c, []).append((path, split))
    found: dict = {}
    for c, folders in class_dirs.items():
        for folder, split in folders:
            entries, why = _listing(folder)
            if why:
                problems.append(VideoItem(folder, -1, c, split, c, problem=why))
            for f in entries:
                path = os.path.join(folder, f)
                stem = os.path.splitext(f)[0]
                if os.path.isdir(path):
                    problems.append(VideoItem(path, -1, c, split, stem, problem=(
                        "a folder inside a class folder; videos must lie directly in it")))
                else:             # files and links, dangling or looping ones too
                    found.setdefault(c, []).append(VideoItem(path, -1, c, split, stem))
    has_video = {c for c, its in found.items() if any(
        os.path.splitext(it.path)[1][1:].lower() in VIDEO_EXTS for it in its)}
    classes = sorted(has_video)
    for c in sorted(set(class_dirs) - has_video):
        for folder, split in class_dirs[c]:
            problems.append(VideoItem(folder, -1, c, split, c, problem=(
                "a class folder with no video file; no class is made from it")))
    if not classes:
        raise ValueError(f"{root}: no class folder with a video found (expected "
                         f"root/<class>/<video> or root/<split>/<class>/<video>)")
    items = [VideoItem(it.path, label, c, it.split, it.stem)
             for label, c in enumerate(classes) for it in found[c]]
    items += [it for c in sorted(set(found) - has_video) for it in found[c]]
    return items + [VideoItem(it.path, -1, it.label_name, it.split, it.stem,
                              problem=it.problem) for it in problems], classes


def process_video(item_and_index, short_side: int | None, gop: int, crf: int,
                  transcode_video: bool, frame_step: int = 1, tune: str | None = None) -> dict:
    """Read, check (and optionally transcode) one video -> a shard sample or a failure."""
    index, item = item_and_index
    ext = os.path.splitext(item.path)[1][1:].lower()
    if item.problem:
        return {"ok": False, "reason": item.problem}
    if os.path.islink(item.path) and not os.path.exists(item.path):
        try:
            os.stat(item.path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return {"ok": False, "reason": "a link that loops (it leads back to itself)"}
        return {"ok": False, "reason": f"a link that points nowhere "
                                       f"(-> {os.readlink(item.path)})"}
    if not os.path.exists(item.path):
        return {"ok": False, "reason": "file not found"}
    if not os.path.isfile(item.path):
        return {"ok": False, "reason": "not a regular file"}
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
        # A display matrix (phones) is applied here, as players do, so every decoder later
        # sees the frames upright: such a file is always re-encoded.
        rotation = display_rotation(data)
        if transcode_video or window or rotation:
            data, info = transcode(data, short_side, gop=gop, crf=crf, frame_step=frame_step,
                                   window=window, rotation=rotation, tune=tune)
            ext = "mp4"
    except VideoDecodeError as e:
        return {"ok": False, "reason": str(e)}
    meta = {"label": item.label, "label_name": item.label_name, "source": item.path,
            "num_frames": info.num_frames, "fps": info.fps, "width": info.width,
            "height": info.height, "pix_fmt": pixel_format(data)}
    if frame_step > 1:
        meta["frame_step"] = frame_step  # stored frame i is source frame i * frame_step
    if window:
        meta["window"] = list(window)    # trimmed from the whole video to [start, end) s
    if rotation:
        meta["rotation"] = rotation      # turned upright at prep (degrees counterclockwise)
    return {"ok": True, "sample": encode_sample(safe_key(index, item.stem), ext, data, meta)}


def video_work(short_side: int | None, gop: int, crf: int, transcode_video: bool,
               frame_step: int = 1, tune: str | None = None):
    return partial(process_video, short_side=short_side, gop=gop, crf=crf,
                   transcode_video=transcode_video, frame_step=frame_step, tune=tune)


# Which copy of a file found in several splits is kept: the evaluation's (a training copy of a
# test video would leak it), then the input order.
_KEEP_FIRST = {"test": 0, "val": 1, "train": 2, None: 3}


def _file_sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None         # process_video reports why it cannot be read
    return h.hexdigest()


def mark_duplicates(items: list[VideoItem]) -> list[VideoItem]:
    """Inputs whose bytes (and Kinetics window) equal another input's become failures naming
    the copy that is used, so a video is never in two splits or twice in one. Only files of a
    size seen more than once are read, so this costs a stat per input on a set without
    duplicates."""
    sizes: dict = {}
    for i, it in enumerate(items):
        if it.problem is None:
            try:
                if os.path.isfile(it.path):
                    sizes.setdefault(os.path.getsize(it.path), []).append(i)
            except OSError:
                pass
    digests: dict = {}
    same: dict = {}
    for group in sizes.values():
        if len(group) < 2:
            continue
        for i in group:
            real = os.path.realpath(items[i].path)
            if real not in digests:
                digests[real] = _file_sha256(real)
            if digests[real] is not None:
                same.setdefault((digests[real], items[i].window), []).append(i)
    out = list(items)
    for group in same.values():
        if len(group) < 2:
            continue
        keep = min(group, key=lambda i: (_KEEP_FIRST.get(items[i].split, 3), i))
        kept = items[keep]
        where = f" in {kept.split}" if kept.split else ""
        for i in group:
            if i != keep:
                out[i] = replace(items[i], problem=(
                    f"an exact duplicate of {kept.path}{where} (the same bytes); only that "
                    f"copy is used"))
    return out


def shuffle_items(items: list, seed: int | None) -> list:
    """Seeded shuffle of the input order (None keeps it)."""
    if seed is None:
        return list(items)
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]
