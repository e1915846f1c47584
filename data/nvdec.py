"""GPU video decoding for ``data.decode: nvdec``: the GPU's NVDEC engines, through
PyNvVideoCodec, in the loader workers.

Each loader worker keeps one decoder and re-points it from video to video (a new decoder costs
~250 ms, re-pointing a kept one almost nothing), decodes a video's frames on the GPU and hands
them to the usual device-augmentation path as uint8 frames, so the stream's sampling, crops,
masks, order and exact resume are those of ``data.decode: cpu``; the pixels differ from the CPU
decoder's by the YUV->RGB conversion (under 1 level of 255 on average,
``tests/bench/check_nvdec.py``). NVDEC does the work the workers' CPU cores did. The workers
decode, not the training process: decoding threads there hold Python's lock often enough to
starve the thread that launches the model's kernels (measured: a 0.13 s step took ~1.9 s).

Workers that use CUDA are started with ``spawn`` (CUDA cannot be used in a forked child of a
process that already uses it). Where NVDEC cannot be used (no CUDA device, PyNvVideoCodec not
installed) the run says so once and decodes on the CPU, as ``data.decode: cpu`` does. A video
NVDEC refuses (a profile it lacks) is decoded on the CPU; one no decoder reads is skipped and
counted, as on the CPU path.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from typing import Callable

import numpy as np
import torch

from .decode import VideoDecodeError, decode_frames

log = logging.getLogger(__name__)
# Test seam: the workers run the nvdec code path (spawned workers, a kept decoder object) with
# the CPU decoder in place of NVDEC, so everything but the GPU decoder runs on any machine.
EMULATE = "TUBEMAE_NVDEC_EMULATE"


def nvdec_unavailable(device: torch.device) -> str | None:
    """Why NVDEC cannot decode for ``device``, or None when it can."""
    if device.type != "cuda":
        return f"the training device is {device.type}, not a CUDA GPU"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    try:
        importlib.import_module("PyNvVideoCodec")
    except Exception as e:  # not installed, or its CUDA libraries do not load
        return (f"PyNvVideoCodec does not import ({type(e).__name__}: {str(e)[:120]}); "
                f"pip install pynvvideocodec")
    return None


def resolve_decode(decode: str, device: torch.device) -> str:
    """``data.decode`` as it will run: ``nvdec`` where NVDEC can decode for ``device``,
    otherwise ``cpu`` (said once on stderr)."""
    if decode != "nvdec" or os.environ.get(EMULATE):
        return decode
    why = nvdec_unavailable(device)
    if why is None:
        return "nvdec"
    print(f"WARNING: data.decode=nvdec: {why}; decoding on the CPU in the loader workers "
          f"instead (data.decode=cpu)", file=sys.stderr)
    return "cpu"


Pick = Callable[[int], np.ndarray]


class CpuStandIn:
    """The CPU decoder behind the worker decoder's interface (``EMULATE``)."""

    def __init__(self):
        self.videos = 0

    def frames(self, data: bytes, pick: Pick) -> np.ndarray:
        self.videos += 1
        return decode_frames(data, pick)


class NvdecDecoder:
    """One PyNvVideoCodec SimpleDecoder, kept for the worker's life and re-pointed per video
    (through a file in shared memory: re-pointing takes a path); RGB frames decoded into CUDA
    memory, returned as host ``(T, H, W, 3)`` uint8."""

    def __init__(self, gpu: int):
        import PyNvVideoCodec as nvc
        self.nvc, self.gpu = nvc, gpu
        if torch.cuda.is_available():
            torch.cuda.set_device(gpu)
        # the video being decoded; removed after each one, so a worker leaves nothing behind
        self.path = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else
                                 tempfile.gettempdir(), f"tubemae-nvdec-{os.getpid()}")
        self.decoder = None
        self.videos = self.cpu_fallbacks = 0

    def _open(self, data: bytes) -> int:
        with open(self.path, "wb") as f:
            f.write(data)
        if self.decoder is None:
            self.decoder = self.nvc.SimpleDecoder(
                self.path, gpu_id=self.gpu, use_device_memory=True,
                output_color_type=self.nvc.OutputColorType.RGB)
        else:
            self.decoder.reconfigure_decoder(self.path)
        n = len(self.decoder)
        if n < 1:
            raise VideoDecodeError("no video frames")
        return n

    def _decode(self, idx: np.ndarray) -> np.ndarray:
        want = np.asarray(idx, dtype=np.int64).tolist()
        order = sorted(set(want))
        got = self.decoder.get_batch_frames_by_index(order)
        if len(got) != len(order):
            raise VideoDecodeError(f"NVDEC returned {len(got)} of {len(order)} frames")
        frames = torch.stack([torch.from_dlpack(f) for f in got])  # a copy: surfaces are reused
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise VideoDecodeError(f"unexpected frame layout {tuple(frames.shape)} from NVDEC")
        where = torch.from_numpy(np.searchsorted(order, want)).to(frames.device)
        return frames[where].cpu().numpy()

    def frames(self, data: bytes, pick: Pick) -> np.ndarray:
        """The frames ``pick(n)`` chooses from the video's n; ``pick`` is called once."""
        self.videos += 1
        idx = None
        try:
            idx = pick(self._open(data))
            return self._decode(idx)
        except Exception as e:
            self.decoder = None  # a decoder that failed mid-stream is not reused
            self.cpu_fallbacks += 1
            if self.cpu_fallbacks == 1:
                log.warning("NVDEC refused a video (%s); it and any like it are decoded on "
                            "the CPU", str(e).strip().splitlines()[0][:160] if str(e).strip()
                            else type(e).__name__)
            return decode_frames(data, pick if idx is None else idx)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


_WORKER: dict = {}  # the decoder of this process, made on first use


def worker_decoder():
    """This loader worker's video decoder for ``data.decode: nvdec`` (made once per process:
    the GPU of the rank, LOCAL_RANK, that started it)."""
    pid = os.getpid()
    if _WORKER.get("pid") != pid:
        gpu = int(os.environ.get("LOCAL_RANK", "0") or 0)
        _WORKER.update(pid=pid, decoder=CpuStandIn() if os.environ.get(EMULATE)
                       else NvdecDecoder(gpu))
    return _WORKER["decoder"]
