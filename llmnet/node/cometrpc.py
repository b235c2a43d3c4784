"""A small async client for the CometBFT RPC endpoints the node API forwards to."""

from __future__ import annotations

import base64
from typing import Any

import httpx


class RPCError(Exception):
    """CometBFT answered with a JSON-RPC error."""


class RPCUnavailable(Exception):
    """CometBFT could not be reached."""


class CometRPC:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        try:
            resp = await self._http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise RPCUnavailable(f"CometBFT RPC {self.url} unreachable: {exc}") from None
        try:
            data: dict[str, Any] = resp.json()
        except ValueError:
            raise RPCError(f"CometBFT RPC returned HTTP {resp.status_code} without JSON") from None
        if "error" in data:
            err = data["error"]
            raise RPCError(f"{err.get('message', '')} {err.get('data', '')}".strip())
        result: dict[str, Any] = data["result"]
        return result

    async def broadcast_tx_sync(self, tx: bytes) -> dict[str, Any]:
        return await self.call("broadcast_tx_sync", tx=base64.b64encode(tx).decode())

    async def tx(self, tx_hash: bytes) -> dict[str, Any]:
        return await self.call("tx", hash=base64.b64encode(tx_hash).decode(), prove=False)
