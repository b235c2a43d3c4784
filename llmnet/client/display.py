"""Text from others, made safe to print on a terminal."""

from __future__ import annotations

import re

_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """text with every control character but newline and tab shown as an escape (\\x1b, \\u202e): answers,
    prompts, monikers and a node's error details are anyone's words, and raw they could write to the clipboard
    (OSC 52), retitle the window, move the cursor over earlier lines or reorder a line (bidi overrides)."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
