"""Generate Python protobuf code for our own protos and CometBFT's ABCI protos.

CometBFT's .proto files are compiled from the Go module cache of the pinned
release (fetched with `go mod download`), never copied into the repository.
Generated modules land in the top-level package `wire/` (below the state machine, the node, the client
and the experts, which all import it) with their imports rewritten to live under that package.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "wire"
TOP_PACKAGES = ("tendermint", "gogoproto", "llmnet")
KEEP = {"__init__.py", "README.md"}


def module_dir(module: str, version: str) -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        check=True, capture_output=True, text=True,
    ).stdout
    return Path(json.loads(out)["Dir"])


def required_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", go_mod.read_text(), re.M)
    if not match:
        raise SystemExit(f"{module} not required by {go_mod}")
    return match.group(1)


def rewrite_imports(path: Path) -> None:
    text = path.read_text()
    pkgs = "|".join(TOP_PACKAGES)
    text = re.sub(rf"^from ({pkgs})([\w.]*) import", r"from wire.\1\2 import", text, flags=re.M)
    text = re.sub(rf"^import ({pkgs})\.", r"import wire.\1.", text, flags=re.M)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cometbft-version", required=True)
    args = parser.parse_args()

    cmt = module_dir("github.com/cometbft/cometbft", args.cometbft_version)
    gogo_version = required_version(cmt / "go.mod", "github.com/cosmos/gogoproto")
    gogo = module_dir("github.com/cosmos/gogoproto", gogo_version)

    import grpc_tools  # noqa: PLC0415 - only needed at build time

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    cmt_protos = sorted(
        str(p.relative_to(cmt / "proto"))
        for sub in ("abci", "crypto", "types", "version")
        for p in (cmt / "proto" / "tendermint" / sub).glob("*.proto")
    )
    own_protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))

    for old in OUT.iterdir() if OUT.exists() else ():
        if old.name not in KEEP:  # the committed package marker stays, so installs find the package
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}", f"-I{cmt / 'proto'}", f"-I{gogo}", f"-I{well_known}",
        f"--python_out={OUT}", f"--pyi_out={OUT}", f"--grpc_python_out={OUT}",
        "gogoproto/gogo.proto", *cmt_protos, *own_protos,
    ]
    subprocess.run(cmd, check=True)
    for py in OUT.rglob("*.py"):
        rewrite_imports(py)
    for d in [OUT, *[p for p in OUT.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    (OUT / "COMETBFT_VERSION").write_text(args.cometbft_version + "\n")
    print(f"generated {len(cmt_protos)} CometBFT and {len(own_protos)} LLM-Net protos into {OUT}")


if __name__ == "__main__":
    main()
