"""Batches readied on a background thread while the device trains on the current one.

The thread takes the next loader batch, notes the stream's position after it, and runs
``prepare`` (decode on NVDEC, crop and resize, copy to the device) on its own CUDA stream. The
training loop gets finished batches; ``state_dict()`` is the position after the last batch it
*consumed*, not after the ones readied ahead, so a checkpoint resumes exactly where training
stood.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Iterator

import torch


class _Stop(Exception):
    pass


class Prefetcher:
    def __init__(self, batches: Iterator[dict], stream, prepare: Callable[[dict], dict],
                 device: torch.device, depth: int = 2):
        self.batches, self.stream, self.prepare = batches, stream, prepare
        self.cuda = device.type == "cuda"
        if self.cuda and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.side = torch.cuda.Stream(device) if self.cuda else None
        self.device = device
        self.state = stream.state_dict()
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self.thread.start()

    def _put(self, item):
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def _run(self):
        try:
            if self.cuda:
                torch.cuda.set_device(self.device)
            while not self.stopping.is_set():
                raw = next(self.batches)
                state = self.stream.state_dict()
                ctx = torch.cuda.stream(self.side) if self.cuda else contextlib.nullcontext()
                with ctx:
                    batch = self.prepare(raw)
                if self.cuda:
                    self.side.synchronize()
                self._put((batch, state))
        except _Stop:
            pass
        except BaseException as e:  # handed to the training loop, raised there
            with contextlib.suppress(_Stop):
                self._put(e)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while True:
            try:
                item = self.queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the batch prefetch thread stopped") from None
        if isinstance(item, BaseException):
            raise item
        batch, self.state = item
        if self.cuda:  # made on the side stream, used and freed on the training stream
            current = torch.cuda.current_stream(self.device)
            for v in batch.values():
                for t in (v if isinstance(v, (tuple, list)) else [v]):
                    if torch.is_tensor(t) and t.is_cuda:
                        t.record_stream(current)
        return batch

    def state_dict(self) -> dict:
        """The stream position after the last consumed batch (what a checkpoint saves)."""
        return self.state

    def close(self, timeout: float = 10.0):
        """Stop readying batches; a thread still waiting on the loader after ``timeout`` is a
        daemon and ends with the process."""
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self.thread.join(timeout)
