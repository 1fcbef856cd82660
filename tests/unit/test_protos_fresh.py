"""The committed generated code in tradeflow/proto matches the contracts in protos/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("grpc_tools")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_protos.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh() -> None:
    """`gen_protos.py --check` finds tradeflow/proto identical to a fresh generation."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_check_names_a_hand_edited_file(tmp_path: Path) -> None:
    """The staleness comparison names a generated file that was edited by hand."""
    gen = load_script()
    fresh, edited = tmp_path / "fresh", tmp_path / "edited"
    gen.generate(fresh)
    gen.generate(edited)
    stub = edited / "state" / "v1" / "state_service_pb2.pyi"
    stub.write_text(stub.read_text() + "# hand edit\n")
    assert gen.stale_files(fresh, edited) == ["state/v1/state_service_pb2.pyi"]


def test_generated_modules_keep_contract_names() -> None:
    """Modules live under tradeflow.proto while proto packages and RPC paths stay contractual."""
    from tradeflow.proto.executor.v1 import executor_service_pb2

    service = executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"]
    assert service.full_name == "tradeflow.executor.v1.ExecutorService"
    module = executor_service_pb2.ExecuteWorkflowRequest.__module__
    assert module == "tradeflow.proto.executor.v1.executor_service_pb2"
