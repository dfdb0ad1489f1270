"""Where the shared material beside the checkout lives."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def shared_dir() -> Path:
    """../shared beside the checkout (present on developer machines and in CI)."""
    return SHARED
