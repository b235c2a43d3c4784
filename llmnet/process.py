"""What a long-running server process sets up for itself before it serves."""

from __future__ import annotations

import resource
from typing import Any


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


MAX_GRPC_CONNECTIONS = 1000
"""Incoming connections a gRPC server keeps at once; past it gRPC closes new ones at once. Without a cap,
connections opened and left (no key needed) used every file the process may open, and then its own work failed
too: an expert's daemon could not reach its node, and missed its duties. A cap leaves that work its files; a
flood still shuts out new clients until its connections go (a proxy in front can limit them per address)."""
STREAMS_PER_CONNECTION = 100
"""Calls one connection may have open at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS, gRPC's default none):
one connection carried 20,000 calls that never sent their request."""
IDLE_GRPC_SECONDS = 120
"""A connection with no call for this long is closed (GOAWAY; a gRPC client reconnects at its next call)."""


def grpc_server_options() -> list[tuple[str, int]]:
    """The channel options every gRPC server of ours starts with."""
    # Without SO_REUSEPORT (gRPC's default is on): a second server on an address in use fails to start instead of
    # taking half the clients' connections with answers of its own.
    return [("grpc.so_reuseport", 0), ("grpc.max_allowed_incoming_connections", MAX_GRPC_CONNECTIONS),
            ("grpc.max_connection_idle_ms", IDLE_GRPC_SECONDS * 1000),
            ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION)]


def bind_grpc(server: Any, address: str, what: str, tls: tuple[bytes, bytes] | None = None) -> int:
    """Bind a gRPC server (threaded or aio) to address, TLS-only when tls = (PEM key, PEM certificate chain) is
    given; the port bound, else OSError naming `what` (an address in use, or not this host's)."""
    import grpc

    try:
        port = int(server.add_secure_port(address, grpc.ssl_server_credentials([tls])) if tls is not None
                   else server.add_insecure_port(address))
    except RuntimeError:  # newer grpc raises where older returned 0
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {what} to {address} (in use, or not an address of this host)")
    return port
