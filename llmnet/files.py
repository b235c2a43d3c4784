"""Files only their owner may read: keys, the expert's answers before their reveal, the beacon key."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write data to path whole or not at all (a crash leaves the old file or the new one), created 0600 in one
    step: there is no moment when another user could read it. A leftover temporary file of a crash is removed
    first, since O_EXCL must create the file with our mode, whatever an older one had."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(data)
    os.replace(tmp, path)
