"""A blocking GET against CometBFT's JSON-RPC over HTTP, for clients outside the node (verifier, daemon)."""

from __future__ import annotations

from typing import Any

import httpx


class CometError(Exception):
    """CometBFT was unreachable, answered without JSON, or returned a JSON-RPC error."""


_HTTP = httpx.Client()
"""One client for every call: httpx.get builds a new one (TLS context included) each time, about 40 ms of
CPU, which a daemon polling on every block paid several times a block."""


def comet_get(url: str, method: str, timeout: float = 10, **params: Any) -> dict[str, Any]:
    try:
        data = _HTTP.get(f"{url.rstrip('/')}/{method}", params=params, timeout=timeout).json()
    except httpx.HTTPError as exc:
        raise CometError(f"CometBFT RPC {url} unreachable: {exc}") from None
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep for the parser
        raise CometError(f"CometBFT RPC {url} answered {method} without JSON it could read") from None
    if not isinstance(data, dict):
        raise CometError(f"CometBFT RPC {url} answered {method} with something other than a JSON-RPC reply")
    if "error" in data:
        err = data["error"]
        said = (err.get("data") or err.get("message")) if isinstance(err, dict) else err
        raise CometError(f"CometBFT {method}: {str(said)[:500]}")
    result = data.get("result")
    if not isinstance(result, dict):
        raise CometError(f"CometBFT RPC {url} answered {method} without a result object")
    return result
