"""Checking a store proof (CometBFT simple:v ProofOps) against an app hash, client side."""

from __future__ import annotations

from abci_app.store.links import proves_absence
from abci_app.store.merkle import kv_leaf, root_from_aunts
from wire.tendermint.crypto import proof_pb2


class ProofError(Exception):
    pass


def verify_store_proof(ops: list[proof_pb2.ProofOp], store: str, key: bytes, value: bytes,
                       app_hash: bytes) -> None:
    """Raise ProofError unless ops prove store/key = value under app_hash."""
    if len(ops) != 2 or any(op.type != "simple:v" for op in ops):
        raise ProofError("expected two simple:v proof operations")
    expected_keys = [key, store.encode()]
    current = value
    for op, want in zip(ops, expected_keys, strict=True):
        inner = proof_pb2.ValueOp.FromString(op.data)
        if op.key != want or inner.key != want:
            raise ProofError(f"proof is for key {op.key!r}, expected {want!r}")
        leaf = kv_leaf(want, current)
        if leaf != inner.proof.leaf_hash:
            raise ProofError("leaf hash does not match the value")
        root = root_from_aunts(inner.proof.index, inner.proof.total, leaf, list(inner.proof.aunts))
        if root is None:
            raise ProofError("malformed proof path")
        current = root
    if current != app_hash:
        raise ProofError(f"proof root {current.hex()} differs from app hash {app_hash.hex()}")


def verify_absence(ops: list[proof_pb2.ProofOp], store: str, key: bytes, link: bytes, link_value: bytes,
                   app_hash: bytes) -> None:
    """Raise ProofError unless ops prove, under app_hash, a link (the response's key and value) that skips
    `key`: the app's proof that nothing is stored at key (abci_app/store/links.py)."""
    try:
        skips = proves_absence(key, link, link_value)
    except ValueError:
        skips = False
    if not skips:
        raise ProofError(f"the link {link!r} does not show key {key!r} absent")
    verify_store_proof(ops, store, link, link_value, app_hash)
