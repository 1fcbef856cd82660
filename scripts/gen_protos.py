"""Generate ``tradeflow/proto`` from ``protos/`` (``--check``: fail if it is stale).

protoc writes modules under the protos' own package path (``tradeflow/<service>/v1``),
which would shadow the library's subpackages; they are moved under ``tradeflow.proto``
and every reference to a generated module is rewritten to match, in the ``.py``
modules and in the mypy-protobuf ``.pyi`` stubs. Only module paths are rewritten:
the protobuf package names inside descriptors and gRPC method paths stay
``tradeflow.<service>.v1``, as the contracts define them.

Usage: ``python scripts/gen_protos.py [--check]``.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

__all__ = ["generate", "main", "stale_files"]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "tradeflow" / "proto"

_PACKAGE_DOC = '"""Generated protobuf and gRPC modules: do not edit, run `make protos`."""\n'

# A generated module path (``tradeflow.state.v1.state_service_pb2``) or the
# package of a ``from ... import`` line; descriptor names such as
# ``.tradeflow.common.v1.Event`` end in a message name and are left alone.
_MODULE_PATH = re.compile(r"\btradeflow\.(\w+)\.v1\.(\w+_pb2(?:_grpc)?)\b")
_FROM_IMPORT = re.compile(r"^from tradeflow\.(\w+)\.v1 import ", re.MULTILINE)


def _plugin(name: str) -> Path:
    """The protoc plugin ``name`` installed beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        sys.exit(f"gen_protos: protoc plugin {name!r} not found (pip install mypy-protobuf)")
    return Path(found)


def _rewrite(source: str) -> str:
    source = _MODULE_PATH.sub(r"tradeflow.proto.\1.v1.\2", source)
    return _FROM_IMPORT.sub(r"from tradeflow.proto.\1.v1 import ", source)


def generate(dest: Path) -> None:
    """Generate the complete ``tradeflow/proto`` tree into the empty directory ``dest``."""
    raw = dest.parent / (dest.name + ".raw")
    raw.mkdir()
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={raw}",
        f"--grpc_python_out={raw}",
        f"--mypy_out=quiet:{raw}",
        f"--mypy_grpc_out=quiet:{raw}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("gen_protos: protoc failed (see its messages above)")
    generated = raw / "tradeflow"
    dest.mkdir(exist_ok=True)
    (dest / "__init__.py").write_text(_PACKAGE_DOC)
    for path in sorted(generated.rglob("*")):
        out = dest / path.relative_to(generated)
        if path.is_dir():
            out.mkdir()
            (out / "__init__.py").write_text("")
        else:
            out.write_text(_rewrite(path.read_text()))
    shutil.rmtree(raw)


def stale_files(fresh: Path, committed: Path) -> list[str]:
    """Paths (relative to the tree) that differ, are missing or are extra in ``committed``."""
    fresh_files = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
    committed_files = {
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    differing = {
        rel
        for rel in fresh_files & committed_files
        if not filecmp.cmp(fresh / rel, committed / rel, shallow=False)
    }
    return sorted(str(rel) for rel in differing | (fresh_files ^ committed_files))


def main(argv: list[str] | None = None) -> int:
    """Regenerate ``tradeflow/proto``, or with ``--check`` report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if tradeflow/proto differs from protos/"
    )
    check = parser.parse_args(argv).check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "proto"
        generate(fresh)
        if check:
            stale = stale_files(fresh, TARGET) if TARGET.exists() else ["(tradeflow/proto missing)"]
            if stale:
                print(
                    "gen_protos: tradeflow/proto is stale; run `make protos` and commit. "
                    "Differing files: " + ", ".join(stale),
                    file=sys.stderr,
                )
                return 1
            print("gen_protos: tradeflow/proto is up to date")
            return 0
        if TARGET.exists():
            shutil.rmtree(TARGET)
        shutil.copytree(fresh, TARGET)
    print(f"gen_protos: wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
