"""JSON Lines as the experts' data files use them: one JSON value per line, blank lines skipped, and an error
that names the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def values(text: str, name: str, error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of text; error("name:N: not JSON: ...") at the first bad one."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise error(f"{name}:{number}: not JSON: {exc}") from None
        yield number, value
