"""Test wheels served from a cache folder.

Shared by several test modules (it was in test_fetch.py)."""

from __future__ import annotations

from pathlib import Path


def cache_wheels(home: Path) -> list[str]:
    d = home / "cache" / "wheels"
    return sorted(p.name for p in d.rglob("*.whl")) if d.is_dir() else []
