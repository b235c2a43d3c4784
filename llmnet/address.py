"""host:port as given on a command line: checked once, before anything is bound or dialled."""

from __future__ import annotations

MAX_PORT = 65535


def host_port(text: str, what: str) -> tuple[str, int]:
    """(host, port) of "host:port" or "[v6]:port"; ValueError naming `what` otherwise. A port past 65535 is
    refused: the socket layer would take it modulo 65536 (99999 served on 34463) or raise a traceback."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > MAX_PORT:
        raise ValueError(f"{what} must be host:port with a port of 0-{MAX_PORT}, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)
