"""ed25519 signing keys and a file-based keyring.

Each key is DIR/<name>.json. Private keys are encrypted with a passphrase (scrypt + AES-256-GCM)
unless the key was created with unsafe_plaintext, which only test keyrings should use.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from abci_app.crypto import address_of
from llmnet.files import write_private

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_KEYRING = "~/.llmnet/keyring"
MAX_PASSPHRASE_FILE = 4096


class KeyringError(Exception):
    pass


SEED_BYTES = 32


@dataclass(frozen=True)
class Key:
    name: str
    seed: bytes = field(repr=False)  # a traceback or a debug line showing a Key must not show its secret

    @classmethod
    def generate(cls, name: str) -> Key:
        raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(name, raw)

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_key(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def address(self) -> str:
        return address_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def _kdf(salt: bytes) -> Scrypt:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1)


class Keyring:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _path(self, name: str) -> Path:
        if not NAME_RE.fullmatch(name):
            raise KeyringError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        return self.dir / f"{name}.json"

    def add(self, key: Key, passphrase: str | None, unsafe_plaintext: bool = False) -> None:
        path = self._path(key.name)
        if path.exists():
            raise KeyringError(f"key {key.name!r} already exists in {self.dir}")
        record: dict[str, str] = {
            "name": key.name,
            "address": key.address,
            "public_key": base64.b64encode(key.public_key).decode(),
        }
        if unsafe_plaintext:
            record["private_key_plaintext"] = base64.b64encode(key.seed).decode()
        else:
            if not passphrase:
                raise KeyringError("a passphrase is required (or --unsafe-plaintext for test keys)")
            salt, nonce = os.urandom(16), os.urandom(12)
            sealed = AESGCM(_kdf(salt).derive(passphrase.encode())).encrypt(nonce, key.seed, key.name.encode())
            record["private_key_encrypted"] = base64.b64encode(salt + nonce + sealed).decode()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())

    def record(self, name: str) -> dict[str, str]:
        path = self._path(name)
        if not path.exists():
            raise KeyringError(f"no key named {name!r} in {self.dir}")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise KeyringError(f"key file {path} is corrupt: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise KeyringError(f"key file {path} is corrupt: not an object of strings")
        return data

    def is_encrypted(self, name: str) -> bool:
        return "private_key_encrypted" in self.record(name)

    def load(self, name: str, passphrase: str | None = None) -> Key:
        """The key, checked against the address its file shows: those fields are not sealed, and `keys show`,
        `keys list` and names given as recipients read them (an edited file would have sent funds elsewhere
        while its key still signed)."""
        rec = self.record(name)
        key = self._unsealed(name, rec, passphrase)
        shown = rec.get("address")
        if shown is not None and shown != key.address:
            raise KeyringError(f"key file of {name!r} shows address {shown}, but its key is {key.address}: the file "
                               "was altered")
        return key

    def _unsealed(self, name: str, rec: dict[str, str], passphrase: str | None) -> Key:
        try:
            if "private_key_plaintext" in rec:
                seed = base64.b64decode(rec["private_key_plaintext"], validate=True)
                if len(seed) != SEED_BYTES:
                    raise ValueError
                return Key(name, seed)
            blob = base64.b64decode(rec["private_key_encrypted"], validate=True)
        except (KeyError, ValueError):
            raise KeyringError(f"key file of {name!r} holds no key it can read") from None
        if passphrase is None:
            raise KeyringError(f"key {name!r} is encrypted: a passphrase is required")
        salt, nonce, sealed = blob[:16], blob[16:28], blob[28:]
        try:
            seed = AESGCM(_kdf(salt).derive(passphrase.encode())).decrypt(nonce, sealed, name.encode())
        except Exception:  # noqa: BLE001 - any failure here means a wrong passphrase or a tampered file
            raise KeyringError(f"wrong passphrase for key {name!r}") from None
        return Key(name, seed)

    def names(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json"))


def keyring_dir(given: str | None) -> Path:
    """--keyring, else LLMNET_KEYRING, else ~/.llmnet/keyring (both CLIs read it so)."""
    return Path(given or os.environ.get("LLMNET_KEYRING", DEFAULT_KEYRING)).expanduser()


def passphrase_from(passphrase_file: str | None) -> str | None:
    """--passphrase-file's content, else LLMNET_PASSPHRASE, else None."""
    if passphrase_file:
        with open(passphrase_file, "rb") as f:
            data = f.read(MAX_PASSPHRASE_FILE + 1)  # bounded: /dev/zero or a wrong file must not exhaust memory
        if len(data) > MAX_PASSPHRASE_FILE:
            raise KeyringError(f"{passphrase_file} is over {MAX_PASSPHRASE_FILE} bytes: not a passphrase file")
        try:
            return data.decode().strip()
        except UnicodeDecodeError:
            raise KeyringError(f"{passphrase_file} is not UTF-8 text") from None
    return os.environ.get("LLMNET_PASSPHRASE")


def unlock(ring: Keyring, name: str, passphrase: str | None, ask: Callable[[str], str] | None = None) -> Key:
    """Load a key; an encrypted one with no passphrase given is asked for with ask (a prompt), if any."""
    if passphrase is None and ask is not None and ring.is_encrypted(name):
        passphrase = ask(f"passphrase for {name}: ")
    return ring.load(name, passphrase if ring.is_encrypted(name) else None)
