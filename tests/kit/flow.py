"""Reading a target's libraries: their hashes, and what RECORD says of them.

Shared by several test modules (it was in test_flow.py)."""

from __future__ import annotations

from pathlib import Path

from kit import builders


def lib_hashes(sp: Path, rels) -> dict:
    return {r: builders.sha256_file(sp / r) for r in rels}


def record_libs(sp: Path, dists=("torch",)) -> dict:
    """{rel: sha256} of every managed library that RECORD lists."""
    from torchkeeper.engine import libs

    out = {}
    for d in dists:
        for rel, (h, _size) in builders.record_hashes(sp, d).items():
            if libs.parse(rel.rsplit("/", 1)[-1]) is not None:
                out[rel] = h
    return out
