"""Progress of a long command: a bar on a terminal; elsewhere (nohup, SLURM, a pipe) a line
every ``every`` seconds with the count, the rate and the time left, so a log never goes quiet."""
from __future__ import annotations

import sys
import time

PROGRESS_EVERY_S = 30.0


class Progress:
    def __init__(self, total: float, desc: str, unit: str = "input", initial: float = 0,
                 show: bool | None = None, every: float | None = None, file=None):
        from tqdm import tqdm
        self.file = file or sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.every = PROGRESS_EVERY_S if every is None else every
        self.done, self.start = initial, initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file,
                        disable=None if show is None else not show, dynamic_ncols=True)
        self.lines = self.bar.disable and show is not False
        self.t0 = self.last = time.time()

    def update(self, n: float = 1):
        self.done += n
        self.bar.update(n)
        now = time.time()
        if self.lines and now - self.last >= self.every:
            self.last = now
            rate = (self.done - self.start) / max(now - self.t0, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            print(f"{self.desc}: {self.done:.0f}/{self.total:.0f} {self.unit}s, {rate:.1f} "
                  f"{self.unit}s/s, about {left / 60:.0f} min left", file=self.file, flush=True)

    def close(self):
        self.bar.close()
