"""The suite's layout is what pytest collects: no test directory may hide behind pytest's default
`norecursedirs` (which contains "dist", "build", "venv", ...). tests/dist/ was silently skipped once."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_directory_is_collected(pytestconfig: pytest.Config):
    skipped = pytestconfig.getini("norecursedirs")
    dirs = [d for d in TESTS.iterdir() if d.is_dir() and any(d.glob("test_*.py"))]
    assert {"unit", "distributed", "e2e", "gpu", "parity", "property"} <= {d.name for d in dirs}
    for d in dirs:
        hidden = [pat for pat in skipped if d.match(pat)]
        assert not hidden, f"tests/{d.name} matches norecursedirs {hidden}: pytest would never collect it"
