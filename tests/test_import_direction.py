"""The state machine must not reach for clocks, randomness, the environment, ML or networking."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "abci_app"
FORBIDDEN = {"time", "random", "datetime", "secrets", "torch", "grpc", "experts", "llmnet", "requests",
             "httpx", "socket", "threading", "multiprocessing", "subprocess", "uuid"}
# The transport may use asyncio networking; it still may not import the rest.
TRANSPORT_ALLOWED: set[str] = set()
FILES = sorted(p for p in ROOT.rglob("*.py") if "pb" not in p.relative_to(ROOT).parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_forbidden_imports(path: Path) -> None:
    allowed = TRANSPORT_ALLOWED if path.parent.name == "abci" else set()
    bad = (_imports(path) & FORBIDDEN) - allowed
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_environment_or_float(path: Path) -> None:
    text = path.read_text()
    assert "os.environ" not in text and "os.getenv" not in text
    assert "float(" not in text


def test_files_found() -> None:
    assert len(FILES) > 15
