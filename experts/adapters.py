"""Model commitments: sha256 over an adapter directory, stable across machines and copies, and the one
commitment an expert registers for all the domains it serves."""

from __future__ import annotations

import hashlib
from pathlib import Path


def adapter_sha256(directory: str | Path) -> str:
    """sha256 of the sorted lines "<relative path> <sha256 of file>" for every file below directory."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"adapter directory {root} does not exist")
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == "manifest.json":
            continue  # the manifest records the commitment; it cannot be part of it
        lines.append(f"{rel} {hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    if not lines:
        raise FileNotFoundError(f"adapter directory {root} is empty")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


NO_ADAPTER = "0" * 64
"""The commitment of a domain answered by the base model alone."""


def model_commitment(adapters: dict[str, str]) -> str:
    """One adapter: its sha256. Several: sha256 over sorted "domain=sha256" lines."""
    if len(adapters) == 1:
        return next(iter(adapters.values()))
    return hashlib.sha256("".join(f"{d}={h}\n" for d, h in sorted(adapters.items())).encode()).hexdigest()
