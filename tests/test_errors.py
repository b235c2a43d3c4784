import importlib
import pkgutil

import pytest

import abci_app
from abci_app.errors import AppError, registered_errors


def _load_all_modules() -> None:
    for mod in pkgutil.walk_packages(abci_app.__path__, "abci_app."):
        if ".pb" not in mod.name:
            importlib.import_module(mod.name)


def test_error_codes_are_unique_and_stable() -> None:
    _load_all_modules()
    errors = registered_errors()
    assert len(errors) >= 20
    assert len({(c.codespace, c.code) for c in errors.values()}) == len(errors)
    assert all(code >= 2 for _, code in errors)


def test_reusing_a_code_is_rejected_at_definition() -> None:
    with pytest.raises(TypeError, match="reuses"):
        class Duplicate(AppError):  # noqa: F841 - defining it is the test
            codespace = "tx"
            code = 2


def test_error_log_names_code() -> None:
    from abci_app.errors import ErrWrongSequence

    assert ErrWrongSequence("expected 1, got 0").log == "tx/3: expected 1, got 0"
