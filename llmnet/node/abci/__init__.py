"""CometBFT's ABCI socket protocol: framing and the asyncio server."""
