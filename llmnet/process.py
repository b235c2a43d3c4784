"""What a long-running server process sets up for itself before it serves."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one, as Go programs (CometBFT among them) do at start, and
    return it. Every connection is a file: at the usual soft limit of 1024, a thousand idle connections (no
    key needed) refused everyone else; the hard limit is usually hundreds of times larger."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # some systems refuse RLIM_INFINITY for files: keep what we have
            pass
    return soft
