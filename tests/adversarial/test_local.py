"""Attacks from the same machine or through sloppy input: reading someone's keys, names that end in a
newline.

Promises: a key file is never readable by another user, not even for a moment, and an edited one is refused;
names are checked whole.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from abci_app.errors import AppError
from abci_app.x.experts.types import validate_add_domain
from abci_app.x.inference.types import validate_submit
from llmnet.client.keys import Key, Keyring, KeyringError
from wire.llmnet.experts.v1 import experts_pb2 as ex
from wire.llmnet.inference.v1 import inference_pb2 as inf

ADDRESS = Key("a", b"\x01" * 32).address


def test_key_files_are_born_private(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask a user can have
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # look for the file while it is being written
        while not stop.is_set():
            for p in tmp_path.rglob("*"):
                try:
                    seen.append(stat.S_IMODE(p.stat().st_mode) if p.is_file() else 0)
                except FileNotFoundError:
                    pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ring = Keyring(tmp_path / "ring")
        for i in range(20):
            ring.add(Key.generate(f"k{i}"), passphrase=None, unsafe_plaintext=True)
    finally:
        stop.set()
        watcher.join()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ring").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (tmp_path / "ring").iterdir())
    assert all(mode & 0o077 == 0 for mode in seen), sorted({oct(m) for m in seen})


def test_an_edited_key_file_is_refused_and_shows_no_secret(tmp_path: Path) -> None:
    """A key file's address is not sealed with its key: edited, `keys show` and names used as recipients gave
    the editor's address while the key still signed. Loading now checks the key against it. A file holding
    something else than an object is a keyring error, not a TypeError, and a Key's repr hides its seed."""
    import json

    ring = Keyring(tmp_path / "ring")
    key = Key.generate("alice")
    ring.add(key, passphrase="pw")
    assert ring.load("alice", "pw").address == key.address and key.seed.hex() not in repr(key)
    path = tmp_path / "ring" / "alice.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "address": Key.generate("mallory").address}))
    with pytest.raises(KeyringError, match="the file was altered"):
        ring.load("alice", "pw")
    path.write_text(json.dumps([record]))
    with pytest.raises(KeyringError, match="corrupt"):
        ring.load("alice", "pw")
    path.write_text(json.dumps({**record, "private_key_encrypted": "not base64!"}))
    with pytest.raises(KeyringError, match="no key it can read"):
        ring.load("alice", "pw")


@pytest.mark.parametrize("bad", ["kestrel-lang\n", "kestrel\nlang", "Kestrel", "-x", ""])
def test_domain_names_are_checked_whole(bad: str) -> None:
    with pytest.raises(AppError):
        validate_add_domain(ex.MsgAddDomain(authority=ADDRESS, domain=bad))
    with pytest.raises(AppError):
        validate_submit(inf.MsgSubmitQuery(requester=ADDRESS, domain=bad, prompt="p", k=1, rounds=1, max_fee=1))


def test_key_names_are_checked_whole(tmp_path: Path) -> None:
    with pytest.raises(KeyringError):
        Keyring(tmp_path).add(Key.generate("name\n"), passphrase=None, unsafe_plaintext=True)


def test_the_daemon_state_file_is_private(tmp_path: Path) -> None:
    """It holds committed answers and scores before their reveal: readable by another local user (0644 with the
    usual umask), they could be copied in the same round."""
    from experts.daemon import DaemonState

    path = tmp_path / "state" / "expert.json"
    old_umask = os.umask(0o022)
    try:
        DaemonState(answers={(3, 1): "Marta Vensel"}, scores={4: [80, 10]}).save(path)
        path.with_suffix(".tmp").write_text("left by a crash")
        path.with_suffix(".tmp").chmod(0o644)
        DaemonState(answers={(3, 1): "Marta Vensel"}).save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DaemonState.load(path).answers == {(3, 1): "Marta Vensel"}


def test_a_passphrase_file_is_read_bounded(tmp_path: Path) -> None:
    """--passphrase-file /dev/zero read until the kernel killed the CLI (22 GB)."""
    from llmnet.client.keys import MAX_PASSPHRASE_FILE, passphrase_from

    with pytest.raises(KeyringError, match="not a passphrase file"):
        passphrase_from("/dev/zero")
    good = tmp_path / "pw"
    good.write_text("correct horse\n")
    assert passphrase_from(str(good)) == "correct horse"
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff" * 10)
    with pytest.raises(KeyringError, match="UTF-8"):
        passphrase_from(str(binary))
    assert MAX_PASSPHRASE_FILE >= 1024


@pytest.mark.parametrize("text", ["127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1", ":80", "127.0.0.1:-1",
                                  "127.0.0.1:8a", "127.0.0.1:\u0661\u0662"])
def test_a_listen_or_node_address_past_the_port_range_is_refused(text: str) -> None:
    """The socket layer took 99999 modulo 65536 (an expert served on 34463, a client dialled it) or raised."""
    from llmnet.address import host_port
    from llmnet.client.failover import parse_nodes

    with pytest.raises(ValueError, match="port of 0-65535"):
        host_port(text, "--listen")
    with pytest.raises(ValueError, match="--node"):
        parse_nodes([f"127.0.0.1:9090,{text}"], "127.0.0.1:9090")
    assert host_port("[::1]:0", "--listen") == ("::1", 0) and host_port("localhost:65535", "x") == ("localhost", 65535)
    from llmnet.node.config import ConfigError, NodeConfig

    with pytest.raises(ConfigError, match="port of 0-65535"):
        NodeConfig(home=Path("/nonexistent"), grpc_address=text).validate()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_retry_for_takes_finite_seconds(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from llmnet.client.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--retry-for", value, "status"])
    assert exit_.value.code == 2 and "at least 0 and finite" in capsys.readouterr().err


def test_servers_raise_their_open_files_limit_to_the_hard_one() -> None:
    """Each connection is a file: at a soft limit of 1024, a thousand idle connections (no key needed) shut a
    gateway or a node's gRPC API for everyone. Run in a child, whose soft limit starts low."""
    import subprocess
    import sys

    code = ("import resource; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard)); "
            "from llmnet.process import raise_open_files_limit; print(raise_open_files_limit(), "
            "resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    returned, soft, hard = map(int, out)
    import resource

    assert returned == soft
    assert soft == hard if hard != resource.RLIM_INFINITY else soft >= 256  # infinity may be refused for files
