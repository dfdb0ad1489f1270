"""What a run tells the user and records: progress, the run-directory log, phase timings, the machine.

- `Progress` shows a tqdm bar when stderr is a terminal, and otherwise prints a plain line with the rate
  and an ETA at most every `interval` seconds, so long work is visible in CI logs and under torchrun.
- `PhaseTimer`: the CUDA-synced wall time of a phase, recorded through a run logger (`pgolf.rundir`).
- `environment_fingerprint` (env.json), `describe_hardware` and `hardware_matches` (one rule for what
  a run's env.json says about its hardware, used by the audit and the report).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy
import torch

import pgolf


def _tqdm():
    """tqdm's bar class, or None: the bundled train_gpt.py runs without tqdm (plain lines instead)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


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
        self._eta: float | None = None
        self._bar = None
        if enabled and hasattr(self.stream, "isatty") and self.stream.isatty():
            tqdm = _tqdm()
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                                 unit_scale=True)

    def update(self, n: int = 1, eta: float | None = None) -> None:
        """Count n more; eta: seconds left when the caller knows better than the count (a wallclock cap)."""
        self.n += n
        if eta is not None:
            self._eta = max(0.0, eta)
        if not self.enabled:
            return
        if self._bar is not None:
            if eta is not None:
                self._bar.set_postfix_str(f"eta {self._eta:.0f}s", refresh=False)
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
        if self._eta is not None:
            eta = f", eta {self._eta:.0f}s"
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


class PhaseTimer:
    """`with PhaseTimer(logger, "train", device):` -> CUDA-synced wallclock of a phase, passed to
    logger.timing(phase, seconds) (a `rundir.RunLogger`: timings.json) when a logger is given."""

    def __init__(self, logger, phase: str, device=None):
        self.logger, self.phase, self.device = logger, phase, device
        self.seconds = 0.0

    def _sync(self) -> None:
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
    fp = {
        "pgolf": pgolf.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "cuda": torch.version.cuda,
        "device": str(device) if device is not None else "cpu",
    }
    bundle = getattr(pgolf, "__bundle__", None)  # set by a bundled train_gpt.py: which exact file ran
    if bundle:
        fp["bundle"] = dict(bundle)
    if torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name(0)
        fp["gpu_count"] = torch.cuda.device_count()
    try:
        here = Path(pgolf.__file__).resolve().parent
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if sha.returncode == 0:
            fp["git_sha"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return fp


def describe_hardware(env: dict | None) -> str:
    """What an env.json says the run ran on: "8xNVIDIA H100 80GB HBM3", "cpu (2 cores)", ..."""
    if not env:
        return "unknown hardware (no env.json)"
    ws = int(env.get("world_size") or 1)
    if str(env.get("device", "cpu")).startswith("cuda") and env.get("gpu"):
        return f"{ws}x{env['gpu']}"
    return f"cpu ({env.get('cpu_count', '?')} cores)" + (f" x{ws} ranks" if ws > 1 else "")


def hardware_matches(target: str, env: dict | None) -> bool:
    """Whether env.json describes budget.target_hardware ('8xH100 SXM', '2-core CPU', 'any CPU'): a CPU
    target needs no GPU (and that many cores when named); a GPU target needs that many ranks on a GPU
    whose name contains the model (H100), and an SXM target refuses a PCIe card."""
    if not env:
        return False
    gpu = env.get("gpu") if str(env.get("device", "cpu")).startswith("cuda") else None
    t = (target or "").strip()
    if re.search(r"\bcpu\b", t, re.I):
        if gpu:
            return False
        cores = re.search(r"(\d+)\s*-?\s*cores?", t, re.I)
        return cores is None or int(cores.group(1)) == int(env.get("cpu_count") or 0)
    if not gpu:
        return False
    m = re.match(r"(\d+)\s*x\s*(.+)$", t, re.I)
    count, name = (int(m.group(1)), m.group(2)) if m else (1, t)
    key = re.search(r"[A-Za-z]+\d+\w*", name)
    if key is None or key.group(0).lower() not in gpu.lower():
        return False
    if re.search(r"\bsxm\b", name, re.I) and re.search(r"pcie", gpu, re.I):
        return False
    return int(env.get("world_size") or 1) == count
