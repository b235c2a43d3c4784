"""The layout's promises, checked on the source: the import direction, the state machine's purity,
one shape for every module, and small functions.

Layers, lowest first: wire (generated protobufs) -> abci_app (the deterministic state machine) ->
llmnet (node and client) -> experts. An arrow may point down or sideways, never up, and the module
graph has no cycle (lazy imports inside functions count).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"wire": 0, "abci_app": 1, "llmnet": 2, "experts": 3}
PRODUCT = ("abci_app", "llmnet", "experts")
STATE_MACHINE = sorted((ROOT / "abci_app").rglob("*.py"))
MODULE_FILES = {"types.py", "keeper.py", "handler.py", "query.py", "genesis.py"}
FORBIDDEN = {"time", "random", "datetime", "secrets", "math", "torch", "grpc", "requests", "httpx", "socket",
             "asyncio", "threading", "multiprocessing", "subprocess", "uuid", "os", "sqlite3"}
SQLITE_OK = {"abci_app/store/db.py"}  # the store persists; it reads no clock, randomness or environment
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _product_files() -> dict[str, Path]:
    return {_module_name(p): p for top in PRODUCT for p in sorted((ROOT / top).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every absolute import in the file, top level or inside a function, as dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    files = _product_files()

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        graph[name] |= {o for i in _imports(path) if (o := owner(i)) is not None and o != name}
    return graph


def test_no_import_points_up_a_layer() -> None:
    up = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
          if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]]
    assert not up, up
    wire_up = [f"{p.name} -> {i}" for p in (ROOT / "wire").glob("*.py") for i in _imports(p)
               if i.split(".")[0] in PRODUCT]
    assert not wire_up, wire_up


def test_the_client_does_not_need_the_node() -> None:
    bad = [f"{a} -> {b}" for a, targets in _graph().items() if a.startswith("llmnet.client")
           for b in targets if b.startswith("llmnet.node")]
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, str] = {}
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_module_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


@pytest.mark.parametrize("path", STATE_MACHINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_state_machine_imports_no_clock_randomness_io_or_ml(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    allowed = {"sqlite3"} if rel in SQLITE_OK else set()
    bad = {i.split(".")[0] for i in _imports(path)} & (FORBIDDEN - allowed)
    assert not bad, f"{rel} imports {sorted(bad)}"


def _float_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            found.append(f"line {node.lineno}: float literal {node.value}")
        elif isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            found.append(f"line {node.lineno}: true division")
        elif isinstance(node, ast.Name) and node.id in ("float", "complex"):
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            found.append(f"line {node.lineno}: environment read")
    return found


@pytest.mark.parametrize("path", STATE_MACHINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_state_machine_has_no_floats_or_environment(path: Path) -> None:
    found = _float_uses(ast.parse(path.read_text()))
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_the_float_check_sees_what_it_claims() -> None:
    tree = ast.parse("a = 1.5\nb = c / d\ne /= 2\nf = float(g)\nimport os\nh = os.environ\ni = j // k\n")
    assert len(_float_uses(tree)) == 5  # // is integer division and allowed


MODULES = sorted(p for p in (ROOT / "abci_app" / "x").iterdir() if p.is_dir() and not p.name.startswith("_"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_every_module_has_the_same_shape(module: Path) -> None:
    files = {p.name for p in module.glob("*.py")}
    assert MODULE_FILES <= files, f"{module.name} lacks {sorted(MODULE_FILES - files)}"
    defined = {f: {n.name for n in ast.parse((module / f).read_text()).body
                   if isinstance(n, ast.FunctionDef | ast.ClassDef)} for f in MODULE_FILES}
    assert "msg_specs" in defined["handler.py"] and "Querier" in defined["query.py"]
    assert "init_genesis" in defined["genesis.py"]
    assert any(name.endswith("Keeper") for name in defined["keeper.py"])


def test_modules_found() -> None:
    assert [m.name for m in MODULES] == ["auth", "bank", "beacon", "experts", "inference", "validators"]


def test_no_product_function_is_over_60_lines() -> None:
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in _product_files().values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and (node.end_lineno or 0) - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_the_product_and_demo_need_nothing_outside_the_repository() -> None:
    # A clone from the public home has no ../shared: no product, tool, bench or Makefile line may reach it.
    places = [p for d in (*PRODUCT, "tools", "bench") for p in (ROOT / d).rglob("*.py")]
    places += [ROOT / "Makefile", ROOT / "README.md"]
    outside = [str(p.relative_to(ROOT)) for p in places if "../shared" in p.read_text() or
               '"shared"' in p.read_text()]
    assert outside == []
    from experts.cli import DEFAULT_DOMAINS_DIR
    domains = sorted(p.name for p in DEFAULT_DOMAINS_DIR.iterdir() if (p / "qa_train.jsonl").is_file())
    assert domains == ["island-herbalism", "kestrel-lang", "orbital-logistics"]
    assert DEFAULT_DOMAINS_DIR.is_relative_to(ROOT)
