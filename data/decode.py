"""Video bytes in, frames out (decord, one thread per loader worker); frames in, video bytes out
(PyAV: the synthetic set, transcoding at prep time, test fixtures).

Frames are numpy uint8 ``(T, H, W, 3)`` RGB.
"""
from __future__ import annotations

import io
import sys
import types
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable

import numpy as np


def _import_decord():
    """Import decord without its CUDA preloading.

    On import, decord2 dlopens every library under ``site-packages/nvidia/*/lib`` into the
    global symbol scope (meant for its CUDA build). The CUDA wheels of torch put their libraries
    there, libnvblas among them, which then intercepts BLAS calls and crashes torch on the CPU.
    We decode on the CPU only, so the ``nvidia`` package is hidden while decord looks for it.
    """
    saved = sys.modules.get("nvidia")
    blind = types.ModuleType("nvidia")
    blind.__spec__ = None  # find_spec("nvidia") raises, which decord treats as "not installed"
    sys.modules["nvidia"] = blind
    try:
        import decord
    finally:
        if saved is None:
            sys.modules.pop("nvidia", None)
        else:
            sys.modules["nvidia"] = saved
    return decord


# Order matters. decord and PyAV each bundle FFmpeg, and decord loads its library into the global
# symbol scope, so PyAV's calls bind to whichever FFmpeg was loaded first. Loading decord first,
# here, gives every process the same binding, so encoding is byte-for-byte reproducible (the
# synthetic set, transcoded shards) whatever else a process imported.
decord = _import_decord()
import av  # noqa: E402  (after decord, see above)

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
# PyAV encoder name and pixel format for each codec a user can ask for.
ENCODERS = {"h264": ("libx264", "yuv420p"), "vp9": ("libvpx-vp9", "yuv420p"),
            "av1": ("libsvtav1", "yuv420p")}


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# x264's AVX-512 functions read memory they do not own: with them, the same frames gave
# different bytes in about one process in five (seen with libx264 165 on AVX-512 CPUs). Capping
# x264 at AVX2 (only where AVX-512 exists, so the cap never asks for more than the CPU has)
# makes encoding reproducible.
_X264_ASM = ":asm=AVX2" if "avx512f" in _cpu_flags() else ""


class VideoDecodeError(ValueError):
    """The bytes are not a video this decoder can read (empty, truncated, not a video)."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


def _reader(data: bytes, num_threads: int = 1):
    if len(data) == 0:
        raise VideoDecodeError("empty file (0 bytes)")
    try:
        return decord.VideoReader(io.BytesIO(data), num_threads=num_threads)
    except Exception as e:  # decord raises its own DECORDError for every container problem
        raise VideoDecodeError(f"cannot open as video: {_short(e)}") from None


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return msg[0][:200] if msg else type(e).__name__


def probe_video(data: bytes) -> VideoInfo:
    """Open the video and decode its first and last frames; raise VideoDecodeError if either fails.

    Checking the last frame catches files cut short after their index was written. Width and
    height are those of the frames as shown (a display rotation applied)."""
    vr = _reader(data)
    n = len(vr)
    if n < 1:
        raise VideoDecodeError("no video frames")
    frames = _get_batch(vr, data, [0, n - 1])
    return VideoInfo(num_frames=n, fps=float(vr.get_avg_fps() or 0.0),
                     width=int(frames.shape[2]), height=int(frames.shape[1]))


_DECORD_TURNS: list = []


def decord_turns() -> bool:
    """Whether this decord applies a video's display matrix itself (decord2 does, decord 0.6.0
    does not). Measured once per process on a small video turned 180 degrees, at a size decord
    decodes (it mis-sizes some small widths)."""
    if not _DECORD_TURNS:
        frame = np.zeros((128, 192, 3), np.uint8)
        frame[:32, :48] = 255                        # a white corner, top left as stored
        data = encode_video([frame, frame], fps=25, crf=0, rotation=180)
        shown = decord.VideoReader(io.BytesIO(data), num_threads=1)[0].asnumpy()
        _DECORD_TURNS.append(bool(shown[-16:, -16:].mean() > shown[:16, :16].mean()))
    return _DECORD_TURNS[0]


def _get_batch(vr, data: bytes, idx: list) -> np.ndarray:
    """Frames ``idx`` as a player shows them: every decoder's output passes through here, so a
    display rotation is applied exactly once, whichever decoder ran."""
    try:
        out = vr.get_batch(idx).asnumpy()
        if out.ndim == 4 and out.shape[-1] == 3:
            return out if decord_turns() else upright(out, display_rotation(data), axes=(1, 2))
    except Exception:
        pass
    # decord mis-sizes the frames of some widths (16, 24, 32, 48, 96, 144 px seen) and fails
    # on some damaged streams; PyAV decodes the same frames (identical where both work).
    return _decode_pyav(data, idx)


def _decode_pyav(data: bytes, idx: list) -> np.ndarray:
    """Frames ``idx`` (presentation order) by PyAV, turned upright as decord2 turns them."""
    wanted = {i: [] for i in idx}
    last = max(idx)
    rotation = 0
    try:
        with av.open(io.BytesIO(data)) as box:
            stream = box.streams.video[0]
            stream.thread_count = 1
            for n, frame in enumerate(box.decode(stream)):
                if n == 0:
                    rotation = _quarter(frame.rotation)
                if n in wanted:
                    wanted[n] = frame.to_ndarray(format="rgb24")
                if n >= last:
                    break
    except Exception as e:
        raise VideoDecodeError(f"cannot decode frames: {_short(e)}") from None
    missing = [i for i in idx if isinstance(wanted[i], list)]
    if missing:
        raise VideoDecodeError(f"cannot decode frames {missing[:3]}: the stream ends early")
    return upright(np.stack([wanted[i] for i in idx]), rotation, axes=(1, 2))


def decode_frames(data: bytes,
                  indices: Iterable[int] | Callable[[int], Iterable[int]] | None = None,
                  num_threads: int = 1) -> np.ndarray:
    """Frames at ``indices`` (all frames when None) -> (T, H, W, 3) uint8, as a player shows
    them (a display rotation applied once, whichever decoder ran).

    ``indices`` may be a function of the video's frame count: a caller that picks frames by
    the length (strided sampling) then opens the video once, not once to count and again to
    decode."""
    vr = _reader(data, num_threads)
    n = len(vr)
    if callable(indices):
        indices = indices(n)
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    if n < 1 or (idx and (min(idx) < 0 or max(idx) >= n)):
        raise VideoDecodeError(f"frame indices out of range for a video of {n} frames")
    return _get_batch(vr, data, idx)


def display_rotation(data: bytes) -> int:
    """The rotation a player applies to this video (its display matrix, as phones write it),
    in degrees counterclockwise, rounded to a multiple of 90 in (-180, 180]; 0 when there is
    none or the file cannot be read (the decoders report that)."""
    try:
        with av.open(io.BytesIO(data)) as box:
            stream = box.streams.video[0]
            stream.thread_count = 1
            for frame in box.decode(stream):
                return _quarter(frame.rotation)
    except Exception:
        pass
    return 0


def _quarter(angle) -> int:
    """A display matrix's angle rounded to a quarter turn: 0, 90, 180 or -90."""
    return (0, 90, 180, -90)[int(round(float(angle or 0) / 90)) % 4]


def upright(frames: np.ndarray, rotation: int, axes=(0, 1)) -> np.ndarray:
    """Frames as shown: turned ``rotation`` degrees counterclockwise in the plane of ``axes``
    (rows, columns): (0, 1) for one (H, W, C) frame, (1, 2) for (T, H, W, C)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k, axes=axes)) if k else frames


# The colour matrix of a stream, as the device path's ``yuv420_to_rgb`` takes it: AVColorSpace
# BT.709 (1) -> 1, BT.2020 (9 non-constant, 10 constant luminance) -> 2; everything else
# (unspecified included) converts as BT.601 (0), which is what FFmpeg's swscale (and so
# decord's RGB) does for them.
_MATRIX = {1: 1, 9: 2, 10: 2}
# Pixel formats the yuv420 device path ships: 4:2:0 planes, 8-bit (full range as the j formats
# say it) or 10-bit (scaled to 8 bits, as the RGB path's conversion does).
YUV420_FORMATS = ("yuv420p", "yuvj420p", "yuv420p10le")


def pixel_format(data: bytes) -> str | None:
    """The pixel format the video's decoder puts out (``yuv420p``, ``yuv444p``, ...), read
    from the stream's parameters without decoding; None when it cannot be read."""
    try:
        with av.open(io.BytesIO(data)) as box:
            fmt = box.streams.video[0].codec_context.format
            return fmt.name if fmt is not None else None
    except Exception:
        return None


class UnshippableFrames(ValueError):
    """Frames the yuv420 device path cannot ship as they are (another chroma layout, a bit
    depth it does not convert, odd sizes): a setting to change, not a corrupt sample."""


def _i420(frame) -> tuple[np.ndarray, tuple[int, int]]:
    """One decoded frame -> its I420 planes (H * 3 // 2, W) uint8 and its colour (matrix,
    full range); UnshippableFrames for what the device path cannot take."""
    name = frame.format.name
    if name not in YUV420_FORMATS or frame.width % 2 or frame.height % 2:
        raise UnshippableFrames(
            f"frames are {name} {frame.width}x{frame.height}; data.device_format=yuv420 ships "
            f"even-sized {'/'.join(YUV420_FORMATS)} only: re-prepare the set transcoded "
            f"(data.prep ... --transcode) or use data.device_format=rgb")
    planes = frame.to_ndarray()
    if planes.dtype != np.uint8:        # 10-bit: to 8 bits, rounded
        planes = np.minimum((planes.astype(np.uint16) + 2) >> 2, 255).astype(np.uint8)
    full = int(name == "yuvj420p" or frame.color_range == 2)
    return planes, (_MATRIX.get(int(frame.colorspace), 0), full)


def _open_pyav(data: bytes):
    """(container, its first video stream on one thread) of video bytes, or VideoDecodeError;
    the caller closes the container (``with box:``)."""
    try:
        box = av.open(io.BytesIO(data))
    except Exception as e:
        raise VideoDecodeError(f"cannot open as video: {_short(e)}") from None
    if not box.streams.video:
        box.close()
        raise VideoDecodeError("no video stream")
    stream = box.streams.video[0]
    stream.thread_count = 1
    return box, stream


def decode_yuv420(data: bytes, indices: Callable[[int], Iterable[int]] | Iterable[int]
                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """Frames at ``indices`` (presentation order, as ``decode_frames`` counts them) as they
    leave the decoder, in I420 planes: (T, H * 3 // 2, W) uint8 (Y rows, then U and V, each
    (H/2) x (W/2) packed into H/4 rows of W), and the colour (matrix: 0 BT.601, 1 BT.709,
    2 BT.2020; 1 for full range else 0). No RGB conversion: ``yuv420_to_rgb`` does it where
    the frames are used. 10-bit frames are scaled to 8 bits; other layouts raise
    UnshippableFrames.

    Packets are stored in decoding order, which with B-frames is not the order they are shown
    in: each packet's place in presentation order is read from its timestamp (or the decoder's
    output counted, where timestamps rise in storage order), decoding starts at the last
    keyframe shown at or before the first wanted frame and goes on, in storage order, until
    every wanted frame has come out. ``indices`` may be a function of the frame
    count, as in ``decode_frames``."""
    box, stream = _open_pyav(data)
    with box:
        fmt = stream.codec_context.format       # known before decoding for most streams;
        if fmt is not None and fmt.name not in YUV420_FORMATS:      # else each frame says
            raise UnshippableFrames(
                f"frames are {fmt.name}; data.device_format=yuv420 ships "
                f"{'/'.join(YUV420_FORMATS)} only: re-prepare the set transcoded (data.prep "
                f"... --transcode) or use data.device_format=rgb")
        packets = [p for p in box.demux(stream) if p.size]
        n = len(packets)
        idx = [int(i) for i in (indices(n) if callable(indices) else indices)]
        if not idx or min(idx) < 0 or max(idx) >= n:
            raise VideoDecodeError(f"frame indices out of range for a video of {n} frames")
        # Timestamps tell the shown order where the container keeps them (mp4, mkv, webm:
        # stored out of order when there are B-frames). Where they rise in storage order they
        # say nothing (AVI writes them so even with B-frames): the decoder's output is counted
        # instead, from a keyframe whose stored position is its shown one (a closed GOP).
        pts = [p.pts for p in packets]
        timed = None not in pts and any(a >= b for a, b in zip(pts, pts[1:]))
        if timed:       # presentation index of each stored packet
            by_time = sorted(range(n), key=lambda s: packets[s].pts)
            shown = np.empty(n, np.int64)
            shown[by_time] = np.arange(n)
            place = {packets[s].pts: int(shown[s]) for s in range(n)}
        else:           # no timestamps, or rising ones: the decoder's output is counted
            shown = np.arange(n)
        first, wanted = min(idx), set(idx)
        start = max((s for s in range(n) if packets[s].is_keyframe and shown[s] <= first),
                    default=0)
        got: dict = {}
        colour = (0, 0)
        ctx = stream.codec_context
        counted = int(shown[start])
        try:
            for p in packets[start:] + [None]:
                for frame in ctx.decode(p):
                    if timed and frame.pts in place:
                        k = place[frame.pts]
                    else:
                        k = counted
                    counted = k + 1
                    if k in wanted and k not in got:
                        got[k], colour = _i420(frame)
                if len(got) == len(wanted):
                    break
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"cannot decode frames: {_short(e)}") from None
    missing = [i for i in idx if i not in got]
    if missing:
        raise VideoDecodeError(f"cannot decode frames {missing[:3]}: the stream ends early")
    return np.stack([got[i] for i in idx]), colour


def encode_video(frames: Iterable[np.ndarray], fps: float, codec: str = "h264",
                 container: str = "mp4", gop: int = 16, crf: int = 23,
                 preset: str = "veryfast", rotation: int = 0,
                 tune: str | None = None) -> bytes:
    """Encode RGB frames (H, W, 3) uint8 into container bytes.

    One encoder thread, so the same frames always give the same bytes (the synthetic set and
    re-runs of prep rely on that). ``gop`` is the keyframe interval: a short one keeps strided
    seeking cheap. Height and width must be even. ``rotation`` (degrees counterclockwise)
    writes a display matrix, as a phone does (test videos). ``tune`` (H.264 only): x264's
    tuning, e.g. ``fastdecode`` (no CABAC, no deblocking filter, no weighted prediction:
    decoding takes about half the CPU for ~9% more bytes at the same crf).
    """
    try:
        encoder, pix_fmt = ENCODERS[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(ENCODERS)}") from None
    out = io.BytesIO()
    fmt = {"mkv": "matroska", "m4v": "mp4"}.get(container, container)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(out, mode="w", format=fmt) as box:
        stream = box.add_stream(encoder, rate=rate)
        stream.pix_fmt = pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        stream.gop_size = gop
        stream.thread_count = 1
        # One encoder thread, said to x264 itself (the stream's thread_count does not reach
        # it), and x264's AVX-512 code kept out: either made the same frames encode to
        # different bytes in some processes.
        if codec == "h264":
            stream.options = {"crf": str(crf), "preset": preset, "bf": "0", "threads": "1",
                              **({"tune": tune} if tune else {}),
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:"
                                             f"threads=1:lookahead-threads=1:sliced-threads=0"
                                             f"{_X264_ASM}"}
        elif codec == "vp9":
            stream.options = {"crf": str(crf + 10), "b": "0", "deadline": "realtime",
                              "cpu-used": "8", "row-mt": "0", "threads": "1"}
        else:
            stream.options = {"crf": str(crf + 12), "preset": "10", "threads": "1"}
        first = True
        for frame in frames:
            if first:
                stream.height, stream.width = frame.shape[:2]
                first = False
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return out.getvalue()


def even_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side == short_side (never upscaled), aspect kept, both even."""
    scale = min(1.0, short_side / min(height, width))
    h = max(2, int(round(height * scale / 2)) * 2)
    w = max(2, int(round(width * scale / 2)) * 2)
    return h, w


def transcode(data: bytes, short_side: int | None, gop: int = 16, crf: int = 23,
              codec: str = "h264", frame_step: int = 1,
              window: tuple[float, float] | None = None,
              rotation: int = 0, tune: str | None = None) -> tuple[bytes, VideoInfo]:
    """Re-encode a video for fast strided loading: short side <= short_side, every
    ``frame_step``-th frame (0, k, 2k, ...; the frame rate divided by k), a keyframe every
    ``gop`` kept frames, no audio; with ``window`` (start, end) in seconds only the frames
    shown in [start, end); with ``rotation`` (``display_rotation``) the frames turned upright,
    as a player shows them, and no display matrix left; ``tune`` as in ``encode_video``.
    Returns the new bytes (mp4) and their probe."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    src, stream = _open_pyav(data)
    with src:
        rate = stream.average_rate or stream.guessed_rate or 25
        size = None

        def frames():
            nonlocal size
            kept = 0
            try:
                for frame in src.decode(stream):
                    if window is not None:
                        t = frame.time if frame.time is not None else 0.0
                        if t < window[0] - 1e-6:
                            continue
                        if t >= window[1] - 1e-6:
                            break
                    kept += 1
                    if (kept - 1) % frame_step:
                        continue
                    if size is None:
                        side = short_side or min(frame.height, frame.width)
                        size = even_size(frame.height, frame.width, side)
                    img = frame.reformat(width=size[1], height=size[0], format="rgb24",
                                         interpolation="AREA")
                    yield upright(img.to_ndarray(), rotation)
            except av.error.FFmpegError as e:
                raise VideoDecodeError(f"cannot decode frames: {_short(e)}") from None

        out = encode_video(frames(), fps=float(rate) / frame_step, codec=codec, gop=gop, crf=crf,
                           tune=tune)
    if size is None:
        raise VideoDecodeError("no decodable video frames" + (
            f" in {window[0]:g}-{window[1]:g} s" if window else ""))
    return out, probe_video(out)
