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
            try:
                from tqdm import tqdm
            except ImportError:  # the bundled train_gpt.py runs without tqdm: plain lines instead
                tqdm = None
            if tqdm is not None:
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
        eta = f", eta {(self.total - self.n) * el / self.n:.0f}s" if self.total and 0 < self.n < self.total else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} ({self.n / el:.1f} {self.unit}/s, {el:.0f}s{eta})",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunLogger:
    """Rank-0 writer of a run directory: log.txt (human, greppable key:value lines), metrics.jsonl
    (machine), JSON side files, and phase timings. On other ranks every method is a no-op.
    """

    def __init__(self, run_dir, is_main: bool = True, echo: bool = True):
        from pathlib import Path

        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.echo = echo
        self.timings: dict[str, float] = {}
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            timings = self.run_dir / "timings.json"
            if timings.is_file():  # a resumed run keeps the phases already measured
                import json

                self.timings = json.loads(timings.read_text())

    def log(self, line: str) -> None:
        if not self.is_main:
            return
        if self.echo:
            print(line, flush=True)
        with (self.run_dir / "log.txt").open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def metric(self, **fields) -> None:
        if not self.is_main:
            return
        import json

        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(fields, sort_keys=True) + "\n")

    def write_json(self, name: str, obj) -> None:
        if not self.is_main:
            return
        import json
        import os

        path = self.run_dir / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def timing(self, phase: str, seconds: float) -> None:
        """Record a named phase's duration (seconds) in timings.json (accumulates across resumes)."""
        self.timings[phase] = self.timings.get(phase, 0.0) + float(seconds)
        self.write_json("timings.json", self.timings)


    def set_timing(self, phase: str, seconds: float) -> None:
        self.timings[phase] = float(seconds)
        self.write_json("timings.json", self.timings)


class PhaseTimer:
    """`with PhaseTimer(logger, "train", device):` -> CUDA-synced wallclock of a phase into timings.json."""

    def __init__(self, logger: RunLogger | None, phase: str, device=None):
        self.logger, self.phase, self.device = logger, phase, device
        self.seconds = 0.0

    def _sync(self) -> None:
        import torch

        if self.device is not None and getattr(self.device, "type", str(self.device)) == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> PhaseTimer:
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0
        if self.logger is not None:
            self.logger.timing(self.phase, self.seconds)


def environment_fingerprint(device=None, world_size: int = 1) -> dict:
    """Versions, hardware and code identity for env.json and the log header."""
    import platform
    import subprocess

    import numpy
    import torch

    import pgolf

    fp = {
        "pgolf": pgolf.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "cuda": torch.version.cuda,
        "device": str(device) if device is not None else "cpu",
    }
    if torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name(0)
        fp["gpu_count"] = torch.cuda.device_count()
    try:
        from pathlib import Path

        here = Path(pgolf.__file__).resolve().parent
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if sha.returncode == 0:
            fp["git_sha"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return fp
