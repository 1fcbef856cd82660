"""A real crash: a `tradeflow run` process is SIGKILLed between two orders, then
`tradeflow executions resume` finishes the execution once the dead owner's lease
lapsed (and is refused while it had not); each order happened once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from gate import GateServer
from workflows import gated_orders


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tradeflow.app.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_between_two_orders_then_resume_trades_each_once(
    tmp_path: Path, gate: GateServer
) -> None:
    """Kill -9 after the first fill: a resume is refused (naming the owner) until the dead
    owner's lease lapses, then the second order fills and neither is duplicated."""
    workflow = gated_orders(gate.url)
    path = tmp_path / "bot.json"
    path.write_text(json.dumps(workflow))
    db = tmp_path / "state.db"
    env = {
        **os.environ,
        "TRADEFLOW_SQLITE_PATH": str(db),
        "TRADEFLOW_LOG_LEVEL": "warning",
        "TRADEFLOW_EGRESS_ALLOW": gate.allow,
    }

    # A long lease: the refused resume below cannot race the lease's expiry.
    bot = cli("run", str(path), env={**env, "TRADEFLOW_LEASE_SECONDS": "30"})
    assert gate.arrived.wait(60), bot.stderr.read() if bot.stderr else "no output"
    bot.send_signal(signal.SIGKILL)
    bot.wait(30)
    assert bot.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as conn:
        ((execution_id, status),) = conn.execute("SELECT execution_id, status FROM executions")
        orders_before = conn.execute("SELECT client_order_id FROM paper_orders").fetchall()
    assert status == "running"
    assert orders_before == [(f"{execution_id}:first",)]

    refused = cli("executions", "resume", execution_id, env=env)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and f"pid {bot.pid}" in err, err

    # The dead owner's lease lapses by itself; here it is cut short instead of waited for.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE leases SET expires_at = 0")
    listed = cli("executions", "list", env=env)
    out, _ = listed.communicate(timeout=60)
    assert "orphan" in out, out

    gate.open.set()
    resumed = cli("executions", "resume", execution_id, env=env)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert "(resumed)" in out

    with sqlite3.connect(db) as conn:
        orders = sorted(r[0] for r in conn.execute("SELECT client_order_id FROM paper_orders"))
        ((final,),) = conn.execute("SELECT status FROM executions")
    assert orders == [f"{execution_id}:first", f"{execution_id}:second"]
    assert final == "completed"

    show = cli("executions", "show", execution_id, env=env)
    out, _ = show.communicate(timeout=60)
    assert show.returncode == 0
    assert out.count("completed") >= 5
