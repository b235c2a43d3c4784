"""Attacks from the same machine or through sloppy input: reading someone's keys, names that end in a
newline.

Promises: a key file is never readable by another user, not even for a moment; names are checked
whole.
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


@pytest.mark.parametrize("bad", ["kestrel-lang\n", "kestrel\nlang", "Kestrel", "-x", ""])
def test_domain_names_are_checked_whole(bad: str) -> None:
    with pytest.raises(AppError):
        validate_add_domain(ex.MsgAddDomain(authority=ADDRESS, domain=bad))
    with pytest.raises(AppError):
        validate_submit(inf.MsgSubmitQuery(requester=ADDRESS, domain=bad, prompt="p", k=1, rounds=1, max_fee=1))


def test_key_names_are_checked_whole(tmp_path: Path) -> None:
    with pytest.raises(KeyringError):
        Keyring(tmp_path).add(Key.generate("name\n"), passphrase=None, unsafe_plaintext=True)
