"""Attacks by anyone on the network path: reading and replaying what travels, relaying forged proofs.

Promises: an access signature seen on the wire buys nothing (it covers one request, once); an expert
can serve over TLS so nothing can be read on the way; a receipt that verifies is true (see also
test_receipt_forgery.py); connections opened and left cannot take the files a server process needs; a
signed tx travels with one hash (no one on the way can make another copy of it that the chain runs).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from experts.engine import Engine
from experts.server import ExpertIdentity, create_server
from llmnet.client.expert_api import sign_access, verify_served
from llmnet.client.keys import Key
from tests.adversarial.conftest import expert_server, node_api
from tests.protocol_harness import CHAIN_ID, ProtocolChain
from tests.test_protocol import submit
from wire.llmnet.expert.v1 import expert_pb2 as pb
from wire.llmnet.expert.v1 import expert_pb2_grpc


def _request(chain: ProtocolChain, query_id: int, expert: str, nonce: int, prompt: str = "hello") -> pb.GenerateRequest:
    req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=prompt)], query_id=query_id, round=1,
                             access_nonce=nonce, sampling=pb.Sampling(max_new_tokens=4))
    return sign_access(chain.requester, CHAIN_ID, req, expert)


def test_a_sniffed_access_signature_buys_nothing(chain: ProtocolChain, tiny_engine: Engine) -> None:
    qid = submit(chain)
    expert = chain.key_of(chain.status(qid).query.respondents[0])
    with node_api(chain) as node, expert_server(tiny_engine, expert, node, CHAIN_ID) as addr, \
            grpc.insecure_channel(addr) as channel:
        stub = expert_pb2_grpc.ExpertServiceStub(channel)
        seen = _request(chain, qid, expert.address, 1)
        assert stub.Generate(seen).text is not None  # the requester's own call
        replays = [seen, pb.GenerateRequest()]  # the same bytes; the same signature on another prompt
        replays[1].CopyFrom(seen)
        replays[1].messages[0].content = "write a long essay"
        replays[1].access_nonce = 2
        for replay in replays:
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(replay)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expert.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem_key, cert.public_bytes(serialization.Encoding.PEM)


def test_an_expert_can_serve_over_tls_only(chain: ProtocolChain, tiny_engine: Engine) -> None:
    pem_key, pem_cert = _self_signed()
    expert = chain.experts[0]
    server, port = create_server(tiny_engine, ExpertIdentity(expert, CHAIN_ID), "127.0.0.1:0", tls=(pem_key, pem_cert))
    server.start()
    try:
        req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="hello")],
                                 sampling=pb.Sampling(max_new_tokens=4))
        creds = grpc.ssl_channel_credentials(root_certificates=pem_cert)
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            resp = expert_pb2_grpc.ExpertServiceStub(channel).Generate(req, timeout=30)
            assert verify_served(req, resp, expert.public_key)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError) as err:
            expert_pb2_grpc.ExpertServiceStub(plain).Generate(req, timeout=5)  # no plaintext at all
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # and empty SETTINGS


def _files_taken_by_a_flood(serve: Callable[[], AbstractContextManager[str]], connections: int) -> int:
    """Open `connections` gRPC connections (preface sent, no call) to a server in this process and return how
    many more files the process holds, less the flood's own sockets."""
    with serve() as address:
        host, port = address.rsplit(":", 1)
        before = len(os.listdir("/proc/self/fd"))
        flood = [socket.create_connection((host, int(port))) for _ in range(connections)]
        try:
            for s in flood:
                s.sendall(HTTP2_PREFACE)
            time.sleep(1.0)  # the server has accepted (or closed) them all
            return len(os.listdir("/proc/self/fd")) - before - connections
        finally:
            for s in flood:
                s.close()


@pytest.mark.parametrize("server", ["expert", "node"])
def test_a_flood_of_idle_connections_cannot_take_every_file(server: str, chain: ProtocolChain, tiny_engine: Engine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection is a file of the server's process: connections opened and left (no key needed) took
    every file the process could open, and then its own work failed too (an expert's daemon shares the process
    and could not reach its node). A server keeps at most MAX_GRPC_CONNECTIONS (here lowered to 8) and closes
    the rest at once."""
    import llmnet.process

    expert = chain.key_of(chain.status(submit(chain)).query.respondents[0])
    monkeypatch.setattr(llmnet.process, "MAX_GRPC_CONNECTIONS", 8)

    def serve() -> AbstractContextManager[str]:
        if server == "node":
            return node_api(chain)
        return _expert_behind_a_node(chain, tiny_engine, expert)

    kept = _files_taken_by_a_flood(serve, 60)
    assert kept <= 8 + 4, f"the server kept {kept} files for 60 connections"  # a few for wakeups and such


@contextmanager
def _expert_behind_a_node(chain: ProtocolChain, engine: Engine, key: Key) -> Iterator[str]:
    with node_api(chain) as node, expert_server(engine, key, node, CHAIN_ID) as address:
        yield address


def test_a_signed_tx_has_one_encoding_so_no_one_can_give_it_another_hash(tmp_path: Path) -> None:
    """The envelope around a tx's signed bytes is not signed. Two bytes of an unknown field appended to it made a
    copy with another hash that the chain ran: a client that looked its tx up by hash after a lost reply
    found nothing, re-signed at the next sequence, and paid twice. Any envelope other than the canonical
    encoding is refused now."""
    from abci_app.errors import ErrTxDecode
    from abci_app.tx import decode_tx
    from llmnet.client.txbuilder import send_msg
    from tests.helpers import Harness
    from wire.llmnet.tx.v1 import tx_pb2
    from wire.tendermint.abci import types_pb2 as abci

    h = Harness.create(tmp_path / "s.db", n_keys=2)
    a, b = h.keys
    raw = h.tx(a, send_msg(a.address, b.address, 5))
    t = tx_pb2.Tx.FromString(raw)
    swapped = b"".join(tx_pb2.Tx(**{f: getattr(t, f)}).SerializeToString()
                       for f in ("auth_info_bytes", "body_bytes", "signature"))
    twice = raw + tx_pb2.Tx(signature=t.signature).SerializeToString()
    copies = {"an unknown varint field": raw + bytes([0x78, 0x01]), "an unknown bytes field": raw + b"\x7a\x01\x00",
              "fields out of order": swapped, "a field twice": twice}
    for what, copy in copies.items():
        with pytest.raises(ErrTxDecode, match="not canonically encoded"):
            decode_tx(copy, h.app.registry)
        assert h.app.check_tx(abci.RequestCheckTx(tx=copy)).code != 0, what
    assert h.app.check_tx(abci.RequestCheckTx(tx=raw)).code == 0


def test_a_reveal_read_on_one_chain_opens_no_commitment_on_another() -> None:
    """Salts came from the key, query id and round alone: an expert whose key served a test chain and its main
    chain revealed on the first the salt of its commitment to the same query and round on the second, which a
    reader then opened by trying likely answers (an outside attack recovered an answer and a set of scores). The
    chain id is part of the salt now."""
    from abci_app.x.inference.types import answer_commitment
    from llmnet.client import protocol
    from tests.helpers import deterministic_key

    expert = deterministic_key("two-chains")
    revealed = protocol.reveal_answer(expert, "llmnet-testnet", 5, 1, "Marta Vensel")  # read on the test chain
    hidden = protocol.commit_answer(expert, "llmnet-main", 5, 1, "Marta Vensel")  # pending on the main chain
    guess = answer_commitment("llmnet-main", 5, 1, expert.address, "Marta Vensel", revealed.salt)
    assert guess != hidden.commitment
    assert protocol.reveal_answer(expert, "llmnet-main", 5, 1, "x").salt != revealed.salt
