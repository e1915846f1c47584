"""MedMNIST3D npz files -> one volume shard set per split.

The official files are `{flag}.npz` (28^3) and `{flag}_64.npz` (64^3) with keys
`{split}_images` (N, D, H, W) uint8 and `{split}_labels` (N, 1).
"""
from __future__ import annotations

import io
import os
import shutil
import sys
import urllib.error
import urllib.request

import numpy as np

from .shards import encode_sample

URL = "https://zenodo.org/records/10519652/files/{file}?download=1"

CLASSES = {
    "organmnist3d": ["liver", "kidney-right", "kidney-left", "femur-right", "femur-left",
                     "bladder", "heart", "lung-right", "lung-left", "spleen", "pancreas"],
    "nodulemnist3d": ["benign", "malignant"],
    "adrenalmnist3d": ["normal", "hyperplasia"],
    "fracturemnist3d": ["buckle rib fracture", "nondisplaced rib fracture",
                        "displaced rib fracture"],
    "vesselmnist3d": ["vessel", "aneurysm"],
    "synapsemnist3d": ["inhibitory synapse", "excitatory synapse"],
}
SPLITS = ("train", "val", "test")


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def flag_and_size(npz_path: str) -> tuple[str, int]:
    """'…/organmnist3d_64.npz' -> ('organmnist3d', 64)."""
    stem = os.path.splitext(os.path.basename(npz_path))[0]
    flag, _, size = stem.partition("_")
    return flag, int(size) if size.isdigit() else 28


def check_flag(flag: str):
    if flag not in CLASSES:
        raise ValueError(f"unknown MedMNIST3D flag {flag!r}; choose one of {sorted(CLASSES)}")


def download(flag: str, size: int, root: str, url: str | None = None) -> str:
    """Fetch the official npz into root (written to a temporary name, then renamed)."""
    os.makedirs(root, exist_ok=True)
    name = file_name(flag, size)
    dest = os.path.join(root, name)
    url = url or URL.format(file=name)
    tmp = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = getattr(e, "reason", None) or e
        raise FileNotFoundError(f"could not download {url} ({reason}); without a network, "
                                f"fetch {name} elsewhere, put it into {root} and run the same "
                                f"command without --download") from None
    os.replace(tmp, dest)
    return dest


def locate(flag: str, size: int, root: str, fetch: bool = False, url: str | None = None) -> str:
    """Path of the npz for (flag, size) under root; downloads it when fetch is set, otherwise a
    missing file is an error naming the expected file and where to get it."""
    check_flag(flag)
    if size not in (28, 64):
        raise ValueError(f"MedMNIST3D comes in sizes 28 and 64, not {size}")
    path = os.path.join(root, file_name(flag, size))
    if os.path.isfile(path):
        return path
    if fetch:
        return download(flag, size, root, url)
    raise FileNotFoundError(
        f"{path} not found. Download {file_name(flag, size)} from "
        f"{URL.format(file=file_name(flag, size))} into {root}, or add --download")


def load_npz(path: str) -> dict:
    """The six arrays of an official file, checked: images (N, D, H, W) or channel last
    (N, D, H, W, C) uint8 (a channel axis in front, (N, 1, D, H, W), is taken as one channel);
    labels as (N,) int64 class numbers, from (N,) or (N, 1) whole numbers or exactly one-hot
    (N, K) rows. Anything else is refused naming the array and its shape."""
    with np.load(path, allow_pickle=False) as z:
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")
                   if f"{s}_{k}" not in z.files]
        if missing:
            raise ValueError(f"{path} is not a MedMNIST file: missing keys {missing}")
        out = {k: z[k] for k in z.files}
    for s in SPLITS:
        img, lab = out[f"{s}_images"], out[f"{s}_labels"]
        if img.ndim == 5 and img.shape[1] == 1 and img.shape[-1] not in (1, 3):
            img = out[f"{s}_images"] = img[:, 0]            # (N, 1, D, H, W): one channel
        if img.ndim not in (4, 5) or img.dtype != np.uint8 or \
                (img.ndim == 5 and img.shape[-1] not in (1, 3)):
            raise ValueError(f"{path}: {s}_images should be uint8 (N, D, H, W) or channel "
                             f"last (N, D, H, W, C) with C 1 or 3, got {img.dtype} {img.shape}")
        if len(img) == 0:
            raise ValueError(f"{path}: the {s} split is empty ({s}_images {img.shape}); every "
                             f"split needs at least one volume")
        if len(lab) != len(img):
            raise ValueError(f"{path}: {len(img)} {s} images but {len(lab)} labels")
        out[f"{s}_labels"] = class_numbers(lab, f"{path}: {s}_labels")
    return out


def class_numbers(labels: np.ndarray, what: str) -> np.ndarray:
    """Labels as (N,) int64: (N,) or (N, 1) whole numbers (integer or float dtype), or (N, K)
    rows with exactly one 1 (one-hot, taken as the 1's column). Float labels with a fraction,
    several labels per sample and anything else are refused in one line naming ``what``."""
    lab = labels.reshape(len(labels), -1) if labels.ndim > 1 else labels[:, None]
    if lab.shape[1] > 1:
        one_hot = np.isin(lab, (0, 1)).all() and (lab.sum(axis=1) == 1).all()
        if not one_hot:
            raise ValueError(f"{what} has {lab.shape[1]} values per sample {labels.shape} and "
                             f"they are not one-hot rows: tubemae trains one class per sample "
                             f"(multi-label sets are not supported); give (N,) class numbers")
        return lab.argmax(axis=1).astype(np.int64)
    lab = lab[:, 0]
    if not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.bool_)):
        if not np.issubdtype(lab.dtype, np.floating) or not np.isfinite(lab).all() or \
                (lab != np.round(lab)).any():
            frac = lab[~np.isfinite(lab) | (lab != np.round(lab))][:3] \
                if np.issubdtype(lab.dtype, np.floating) else lab[:3]
            raise ValueError(f"{what} are {lab.dtype} with values such as "
                             f"{frac.tolist()} that are not class numbers; give whole numbers "
                             f"0..K-1")
    return lab.astype(np.int64)


def volume_sample(split: str, i: int, volume: np.ndarray, label: int, classes: list,
                  source: str) -> dict:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(volume), allow_pickle=False)
    meta = {"label": int(label), "label_name": classes[int(label)], "source": f"{source}#{split}/{i}",
            "shape": list(volume.shape)}
    return encode_sample(f"{split}_{i:06d}", "npy", buf.getvalue(), meta)


def shards_from_npz(npz_path: str, out_dir: str, max_samples: int = 1000,
                    max_bytes: int = 10**9, verify: bool = False,
                    classes: list[str] | None = None) -> str:
    """Shard a MedMNIST-format npz file (the six arrays ``{train,val,test}_{images,labels}``)
    into ``out_dir``/{train,val,test} (a finished set is left alone, an interrupted one
    continued); returns ``out_dir``. Class names: ``classes`` when given, else the official
    ones for a file named like an official one, else ``class_0``, ``class_1``, ..."""
    from .runner import write_shard_set

    flag, size = flag_and_size(npz_path)
    official = flag in CLASSES
    if not os.path.isfile(npz_path):
        where = (f" Download {os.path.basename(npz_path)} from "
                 f"{URL.format(file=os.path.basename(npz_path))}" if official else "")
        raise FileNotFoundError(f"{npz_path} not found.{where}")
    arrays = load_npz(npz_path)
    top = max(int(arrays[f"{s}_labels"].max(initial=-1)) for s in SPLITS) + 1
    name = os.path.basename(npz_path)
    options = {"flag": flag if official else None, "size": size, "file": name,
               "shard_samples": max_samples, "shard_bytes": max_bytes}
    if classes is None:
        classes = CLASSES[flag] if official else [f"class_{i}" for i in range(top)]
        if official and top < len(classes):
            print(f"{npz_path}: its labels use {top} of the {len(classes)} {flag} classes; if "
                  f"it is not the official file, name its classes with --classes FILE",
                  file=sys.stderr)
    else:
        options["classes"] = "given"
    what = flag if official and options.get("classes") is None else name
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        bad = labels[(labels < 0) | (labels >= len(classes))]
        if len(bad):
            raise ValueError(f"{npz_path}: {split} labels {sorted(set(bad.tolist()))} outside "
                             f"0..{len(classes) - 1} ({len(classes)} class names for {what})")
        items = [(split, i, images[i], labels[i], classes, name) for i in range(len(images))]
        write_shard_set(os.path.join(out_dir, split), "volume", classes, options, items,
                        volume_work, source_of=lambda it: f"{it[5]}#{it[0]}/{it[1]}", workers=0,
                        max_samples=max_samples, max_bytes=max_bytes, split=split,
                        verify=verify)
    return out_dir


def volume_work(item) -> dict:
    return {"ok": True, "sample": volume_sample(*item)}


def resolve_shards(path: str, cache_dir: str, is_main: bool = True, barrier=lambda: None
                   ) -> str:
    """``data.shards`` as a prepared folder: an official MedMNIST npz file is sharded once into
    ``cache_dir/<file stem>`` (by rank 0; the others wait at ``barrier``) and that folder used;
    anything else is returned as it is."""
    if not path.endswith(".npz"):
        return path
    out = os.path.join(cache_dir, os.path.splitext(os.path.basename(path))[0])
    if is_main:
        shards_from_npz(path, out)
    barrier()
    return out
