"""Progress of long work: a tqdm bar on a terminal; anywhere else (CI, `nohup`, a notebook's log
file) a plain line every tenth of the way and at the end, so a log holds a few readable lines
instead of one physical line of carriage-return updates. `TQDM_DISABLE=1` (tqdm's own switch)
turns both off."""
import os
import sys
import time

from tqdm.auto import tqdm

from kit.core.logs import log

STEPS = 10     # plain lines per bar, besides the last


def progress(iterable=None, total=None, desc="", unit="it", initial=0, disable=False):
    """A tqdm-like bar: iterate over it, or call update(n); set_postfix and close as tqdm's."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if disable or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return LineProgress(iterable, total, desc, unit, initial)


class LineProgress:
    """The bar as log lines: `desc: 30/60 step (50%) in 12.3 s, loss=0.41`."""

    def __init__(self, iterable, total, desc, unit, initial=0):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.postfix, self.started = initial, "", time.time()
        self.shown = self._step()

    def _step(self):
        return int(self.n * STEPS / self.total) if self.total else 0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        if self.shown is not None and self.total and self._step() > self.shown and self.n < self.total:
            self.shown = self._step()
            self._say()

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self):
        if self.shown is not None and self.n:   # once, and only for work that ran: where it ended
            self._say()
        self.shown = None

    def _say(self):
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        of = f"/{self.total}" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        log(f"{self.desc}: {self.n}{of} {self.unit}{share} in {time.time() - self.started:.1f} s{extra}")
