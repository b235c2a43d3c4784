"""Typed errors with stable (codespace, code) pairs.

Each rule raises the error class that names it, where the rule lives; the ABCI layer turns any
AppError into a result with its code, codespace and log in one place. Codes are registered once;
defining the same pair twice is an import-time error.
"""

from __future__ import annotations

from typing import ClassVar

_REGISTRY: dict[tuple[str, int], type[AppError]] = {}


class AppError(Exception):
    """A rejection that a user caused. Carries a stable code; never stops the node."""

    codespace: ClassVar[str] = ""
    code: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            return  # an intermediate base class such as a module's error root
        key = (cls.codespace, cls.code)
        if not cls.codespace or cls.code < 2:
            raise TypeError(f"{cls.__name__}: codespace must be set and code must be >= 2")
        if key in _REGISTRY:
            raise TypeError(f"{cls.__name__} reuses {key} of {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls

    @property
    def log(self) -> str:
        return f"{self.codespace}/{self.code}: {self}"


def registered_errors() -> dict[tuple[str, int], type[AppError]]:
    return dict(_REGISTRY)


class Missing:
    """Marks an error that means "no such thing" (an unknown account, expert, query), whatever its
    module: transports report all of them alike (gRPC NOT_FOUND)."""


class TxError(AppError):
    codespace = "tx"


class ErrTxDecode(TxError):
    code = 2


class ErrWrongSequence(TxError):
    code = 3


class ErrUnauthorized(TxError):
    code = 4


class ErrInsufficientFee(TxError):
    code = 5


class ErrTxTooLarge(TxError):
    code = 6


class ErrTxTimeout(TxError):
    code = 7


class ErrOutOfGas(TxError):
    code = 8


class ErrUnknownMessage(TxError):
    code = 9


class ErrInvalidPubKey(TxError):
    code = 10


class ErrMemoTooLarge(TxError):
    code = 11


class ErrFeeUnpaid(TxError):
    """The signer cannot pay the fee it offered."""

    code = 12


class ErrNoMessages(TxError):
    code = 13


class ErrGasLimitTooHigh(TxError):
    """The tx asks for more gas than a whole block may carry: no block could ever include it."""

    code = 14


class ErrInternal(TxError):
    """The node failed on this tx in a way no rule foresaw (a bug): outside a decided block the tx is refused and
    the node carries on, where the failure would have stopped it; in a decided block it still stops the node."""

    code = 15


class ErrInvalidAddress(AppError):
    """An address field that is not a bech32 account address. Every module's messages raise it; its
    codespace is bank's because bank was the first module to take addresses, and codes never move."""

    codespace = "bank"
    code = 3


class QueryError(AppError):
    codespace = "query"


class ErrNotFound(QueryError, Missing):
    code = 2


class ErrInvalidRequest(QueryError):
    code = 3


class ErrUnknownPath(QueryError):
    code = 4


class ErrHeightUnavailable(QueryError):
    code = 5
