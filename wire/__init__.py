"""Generated protobuf and gRPC code: every wire type, ours (proto/) and CometBFT's ABCI protos.

Built by `make proto` (tools/genproto.py), never committed; only this marker is, so that an install
from a clean clone finds the package before it is generated.
"""
