"""Progress display and (later) run-directory logging.

`Progress` shows a tqdm bar when stderr is a terminal, and otherwise prints a plain line at most
every `interval` seconds, so long work is visible in CI logs and under torchrun without flooding.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True,
                 interval: float = 10.0, stream=None):
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled = enabled
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self._t0 = time.monotonic()
        self._last = self._t0
        self._bar = None
        if enabled and hasattr(self.stream, "isatty") and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                             unit_scale=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def _line(self) -> None:
        el = max(time.monotonic() - self._t0, 1e-9)
        of = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} ({self.n / el:.1f} {self.unit}/s, {el:.0f}s)",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
