"""The `tradeflow` command: exit codes, one-line errors, live progress, halt from another shell."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import kit
import pytest
from workflows import block, resting_bid, trading_workflow

from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.ledger import SQLitePaperLedger
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.app.cli import main
from tradeflow.domain.limits import DEFINITION_MAX_BYTES
from tradeflow.domain.records import ExecutionStatus, Scope, StateBatch

EXAMPLES = Path(__file__).parents[2] / "examples"


def write(tmp_path: Path, definition: object, name: str = "bot.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(definition))
    return str(path)


def test_validate_ok_prints_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """validate: a good file exits 0 and prints the execution order."""
    assert main(["validate", write(tmp_path, trading_workflow())]) == 0
    assert "valid: 6 blocks; order: quote -> size -> cheap -> notional -> buy -> note" in (
        capsys.readouterr().out
    )


def test_validate_lists_every_problem_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate: each problem on its own line naming block and field; exit 2; no traceback."""
    bad = {
        "blocks": [
            block("a", "providers", "nope"),
            block("b", "triggers", "threshold", {"above": "high"}, {"value": "z.x"}),
        ]
    }
    assert main(["validate", write(tmp_path, bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "block 'a': field 'type'" in err
    assert "block 'b': field 'properties.above'" in err and "found str 'high'" in err
    assert "block 'b': field 'inputs.value'" in err


def test_unreadable_and_malformed_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file and broken JSON each give one clear line and exit 2."""
    assert main(["validate", str(tmp_path / "missing.json")]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"blocks": [')
    assert main(["validate", str(broken)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("error: cannot read workflow file")
    assert lines[1].startswith(f"error: {broken}:1:")


@pytest.mark.parametrize("command", [["validate"], ["run"]])
@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"[" * 100_000 + b"]" * 100_000, ":1:1026: not valid JSON: depth limit exceeded"),
        (b'{"blocks": []} trailing', ":1:16: not valid JSON: unexpected content after document"),
        (b'{"blocks": "\xff"}', ":1:1: not valid JSON: str is not valid UTF-8"),
        (b" " * (DEFINITION_MAX_BYTES + 1), f"at most {DEFINITION_MAX_BYTES} bytes"),
    ],
    ids=["100000-deep", "trailing-garbage", "not-utf8", "over-DEFINITION_MAX_BYTES"],
)
def test_deep_huge_or_invalid_json_is_a_one_line_input_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    content: bytes,
    complaint: str,
) -> None:
    """validate and run: a deep, huge or invalid JSON file exits 2 with one line naming it."""
    path = tmp_path / "hostile.json"
    path.write_bytes(content)
    assert main([*command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}") and complaint in err


def test_run_with_a_deep_price_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run --prices: a 100000-deep price file exits 2 with one line naming it."""
    prices = tmp_path / "prices.json"
    prices.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert main(["run", write(tmp_path, trading_workflow()), "--prices", str(prices)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"price file {str(prices)!r}: not valid JSON" in err


@pytest.mark.parametrize("example", ["mean_reversion.json", "arbitrage.json"])
def test_run_examples_show_progress_and_summary(
    example: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """run: the shipped examples complete, one line per node and a summary."""
    code = main(["run", str(EXAMPLES / example), "--prices", str(EXAMPLES / "prices.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("> execution ")
    assert "= completed in" in out
    assert "  ok   " in out


def test_a_file_name_that_is_no_id_still_runs_under_an_id_made_of_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run FILE defaults the workflow id to the file name: characters an id may not hold
    (dots, spaces) become _, so "my bot.v2.json" runs as workflow my_bot_v2."""
    path = tmp_path / "my bot.v2.json"
    path.write_text(json.dumps(trading_workflow()))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["executions", "list", "--workflow", "my_bot_v2"]) == 0
    assert "my_bot_v2" in capsys.readouterr().out


def test_halt_status_resume_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    """halt, status and resume work against the same state file."""
    assert main(["halt", "--scope", "bot", "--target", "bot7", "--reason", "fat finger"]) == 0
    assert main(["status"]) == 0
    assert main(["resume", "--scope", "bot", "--target", "bot7", "--reason", "fixed"]) == 0
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "halted bot 'bot7': fat finger" in out
    assert "HALTED bot 'bot7'" in out
    assert "resumed bot 'bot7'" in out
    assert out.rstrip().endswith("trading: ACTIVE (no halts)")


def test_bad_scope_target_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A bot halt without a target: one line naming the field, exit 2."""
    assert main(["halt", "--scope", "bot", "--reason", "x"]) == 2
    assert "target" in capsys.readouterr().err


def test_run_halted_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A halted run exits 3 and says why."""
    main(["halt", "--reason", "weekend"])
    assert main(["run", write(tmp_path, trading_workflow())]) == 3
    assert "halted: trading halted (global): weekend" in capsys.readouterr().err


def test_events_and_executions_listing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """events prints the recorded history; executions list/show find the run."""
    main(["run", write(tmp_path, trading_workflow()), "--workflow-id", "listed", "--bot-id", "b1"])
    capsys.readouterr()
    assert main(["events", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "execution_started" and events[-1]["type"] == "execution_completed"
    assert main(["executions", "list", "--bot", "b1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "completed" in line and "workflow=listed" in line
    assert main(["executions", "show", line.split()[0]]) == 0
    assert "completed buy" in " ".join(capsys.readouterr().out.split())


def test_halt_from_another_shell_stops_a_running_bot(tmp_path: Path) -> None:
    """A bot looping in one process is stopped by `tradeflow halt` run in another."""
    env = {**os.environ, "TRADEFLOW_LOG_LEVEL": "warning"}
    bot = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradeflow.app.cli",
            "run",
            write(tmp_path, trading_workflow()),
            "--count",
            "100000",
            "--interval",
            "0.01",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bot.stdout is not None
    for line in bot.stdout:  # wait until the bot is trading
        if line.startswith("= completed"):
            break
    halt = subprocess.run(
        [sys.executable, "-m", "tradeflow.app.cli", "halt", "--reason", "stop now"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert halt.returncode == 0, halt.stderr
    _, err = bot.communicate(timeout=60)
    assert bot.returncode == 3
    assert "stop now" in err


def resting_orders(db_path: Path) -> list[tuple[str | None, str]]:
    """``(bot id, client order id)`` of every resting order in the state file's ledger."""

    async def read() -> list[tuple[str | None, str]]:
        conn = open_database(db_path)
        try:
            orders = await SQLitePaperLedger(conn).open_orders("paper", Scope.GLOBAL, None)
        finally:
            conn.close()
        return [(order.bot_id, order.client_order_id) for order in orders]

    return asyncio.run(read())


def test_halt_cancel_orders_cancels_the_scopes_resting_orders_here(
    tmp_path: Path, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Embedded `halt --cancel-orders` cancels the halted bot's resting orders in its own
    process and prints them, the other bot's stay; status shows the halt's state and that
    it cancels resting orders."""
    bid = write(tmp_path, resting_bid())
    for bot in ("b1", "b2"):
        assert main(["run", bid, "--bot-id", bot]) == 0
    (b1, mine), (b2, theirs) = resting_orders(db_path)
    assert (b1, b2) == ("b1", "b2")
    capsys.readouterr()
    halt = ["halt", "--scope", "bot", "--target", "b1", "--reason", "fat finger"]
    assert main([*halt, "--cancel-orders"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "halted bot 'b1': fat finger"
    assert out[1].startswith("resting orders: 1 cancelled by execution ")
    assert out[1].endswith(" (completed)")
    assert out[2:] == [f"  cancelled {mine}"]
    assert resting_orders(db_path) == [("b2", theirs)]
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "HALTED bot 'b1' since " in status
    assert "(cancels resting orders): fat finger" in status


def test_halt_states_are_shown_by_halt_and_status(capsys: pytest.CaptureFixture[str]) -> None:
    """`halt --state` sets cancel_only or reduce_only, which halt and status print; active
    is no halt state (a usage error)."""
    assert main(["halt", "--state", "cancel_only", "--reason", "wind down"]) == 0
    strategy = ["--scope", "strategy", "--target", "s1", "--reason", "unwind"]
    assert main(["halt", "--state", "reduce_only", *strategy]) == 0
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "cancel_only global: wind down" in out
    assert "reduce_only strategy 's1': unwind" in out
    assert "CANCEL_ONLY global since " in out
    assert "REDUCE_ONLY strategy 's1' since " in out
    with pytest.raises(SystemExit) as usage:
        main(["halt", "--state", "active", "--reason", "x"])
    assert usage.value.code == 2


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``tradeflow ARGV`` in this process: exit code, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_limits_set_list_delete_per_scope(capsys: pytest.CaptureFixture[str]) -> None:
    """`limits set` configures a limit per scope (global, strategy, bot) with its options,
    `limits list` shows each (--json too, with its key), `limits delete` removes one and
    says so when there was none."""
    code, out, _ = run_cli(capsys, "limits", "set", "max_position", "5", "--bot", "b1")
    assert code == 0
    assert out.startswith("set max_position bot 'b1': abs_above 5; set by ")
    assert run_cli(capsys, "limits", "set", "max_position", "50")[0] == 0
    rate = ["limits", "set", "order_rate", "10", "--window", "60", "--strategy", "s1"]
    assert run_cli(capsys, *rate)[0] == 0
    daily = [
        *("limits", "set", "daily_loss", "-500", "--workflow", "wf1", "--state", "halted"),
        *("--consecutive", "3", "--timezone", "Europe/London", "--reset-time", "17:00"),
        *("--lift-on-reset", "--cancel-orders", "--actor", "risk-desk"),
    ]
    code, out, _ = run_cli(capsys, *daily)
    assert code == 0
    assert out.startswith(
        "set daily_loss workflow 'wf1': below -500 (moves the scope to halted after 3 "
        "breaches in a row, day from 17:00 Europe/London, lifted at the next day, cancels "
        "resting orders); set by risk-desk at "
    )

    code, out, _ = run_cli(capsys, "limits", "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    assert lines[0].startswith("daily_loss workflow 'wf1': below -500 (")
    assert lines[1].startswith("max_position global: abs_above 50; set by ")
    assert lines[2].startswith("max_position bot 'b1': abs_above 5; set by ")
    assert lines[3].startswith("order_rate strategy 's1': above 10 (per 60s); set by ")
    code, out, _ = run_cli(capsys, "limits", "list", "--json")
    listed = {item["key"]: item for item in map(json.loads, out.splitlines())}
    assert set(listed) == {
        "daily_loss@workflow:wf1",
        "max_position",
        "max_position@bot:b1",
        "order_rate@strategy:s1",
    }
    assert listed["daily_loss@workflow:wf1"]["timezone"] == "Europe/London"
    assert listed["daily_loss@workflow:wf1"]["state"] == "halted"
    assert listed["order_rate@strategy:s1"]["window"] == 60.0

    assert run_cli(capsys, "limits", "delete", "max_position", "--bot", "b1") == (
        0,
        "deleted max_position bot 'b1'\n",
        "",
    )
    assert run_cli(capsys, "limits", "delete", "max_position", "--bot", "b1") == (
        0,
        "no max_position limit on bot 'b1'\n",
        "",
    )
    code, out, _ = run_cli(capsys, "status")
    assert "limit max_position global: abs_above 50" in out
    assert "max_position bot" not in out


def test_limits_list_says_when_there_are_none(capsys: pytest.CaptureFixture[str]) -> None:
    """`limits list` with nothing configured says so (and --json prints nothing)."""
    assert run_cli(capsys, "limits", "list") == (0, "no limits\n", "")
    assert run_cli(capsys, "limits", "list", "--json") == (0, "", "")


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["daily_loss", "-5", "--state", "halted", "--timezone", "Mars/Olympus"], "timezone"),
        (["daily_loss", "-5", "--state", "halted", "--reset-time", "25:00"], "reset_time"),
        (["max_position", "5", "--window", "10"], "window"),
        (["order_rate", "5"], "window"),
        (["max_position", "5", "--state", "halted"], "state"),
        (["max_position", "5", "--consecutive", "3"], "consecutive"),
        (["heartbeat", "-1", "--bot", "b1"], "threshold"),
        (["heartbeat", "nan", "--bot", "b1"], "threshold"),
        (["max_position", "5", "--bot", "not an id"], "--bot"),
        (["max_position", "5", "--direction", "below"], "direction"),
    ],
    ids=[
        "bad-timezone",
        "bad-reset-time",
        "window-on-a-non-rate-limit",
        "rate-without-window",
        "state-on-a-pre-trade-type",
        "consecutive-without-state",
        "negative-ttl",
        "nan-threshold",
        "target-no-id",
        "direction-of-a-fixed-type",
    ],
)
def test_bad_limit_options_are_a_one_line_error_naming_the_field(
    capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    """`limits set` with an option its type does not take, or a malformed one, exits 2
    with one line naming the field; nothing is configured."""
    code, out, err = run_cli(capsys, "limits", "set", *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: invalid field {field!r}: expected ")
    assert run_cli(capsys, "limits", "list")[1] == "no limits\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["limits", "set", "max_position", "5", "--bot", "b1", "--strategy", "s1"],
        ["limits", "set", "max_position", "five"],
        ["limits", "set", "daily_loss", "-5", "--state", "active"],
        ["limits", "set", "daily_loss", "-5", "--consecutive", "0"],
        ["limits", "delete", "max_position", "--bot", "b1", "--workflow", "w"],
        ["heartbeat"],
        ["heartbeat", "--global", "--bot", "b1"],
        ["heartbeat", "--global", "--every", "0"],
        ["heartbeat", "--global", "--every", "inf"],
    ],
    ids=[
        "two-scopes",
        "threshold-no-number",
        "state-active",
        "consecutive-0",
        "delete-two-scopes",
        "heartbeat-no-scope",
        "heartbeat-two-scopes",
        "every-0",
        "every-inf",
    ],
)
def test_limit_and_heartbeat_usage_errors_exit_2(argv: list[str]) -> None:
    """Usage errors of the new commands (two scopes, no scope, a non-number, a state that
    is no restriction, a non-positive count or period) exit 2 as argparse does."""
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2


def test_limits_explain_shows_state_limits_deciding_and_triggers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`limits explain` for some ids shows their state and deciding halt, every limit of
    their scopes with the strictest of each type marked, and each trigger's progress;
    --json carries the same, the deciding limits by key."""
    for argv in (
        ["max_order_notional", "1000"],
        ["max_order_notional", "500", "--bot", "b1"],
        ["max_order_notional", "100", "--bot", "b2"],
        ["heartbeat", "30", "--bot", "b1"],
    ):
        assert run_cli(capsys, "limits", "set", *argv)[0] == 0
    halt = ["halt", "--scope", "bot", "--target", "b1", "--state", "reduce_only"]
    assert run_cli(capsys, *halt, "--reason", "wind down")[0] == 0
    assert run_cli(capsys, "heartbeat", "--bot", "b1")[0] == 0

    code, out, _ = run_cli(capsys, "limits", "explain", "--bot", "b1", "--workflow", "wf1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "for workflow 'wf1', bot 'b1'"
    assert lines[1].startswith("trading: REDUCE_ONLY by the halt of bot 'b1' since ")
    assert lines[1].endswith(": wind down")
    assert lines[2] == "limits (* the strictest of its type, which decides):"
    assert lines[3].startswith(
        "  * heartbeat bot 'b1': no beat for 30s (moves the scope to cancel_only)"
    )
    assert lines[4].startswith("    max_order_notional global: above 1000;")
    assert lines[5].startswith("  * max_order_notional bot 'b1': above 500;")
    assert lines[6] == "triggers:"
    assert lines[7].startswith("    heartbeat bot 'b1': ")
    assert "last beat " in lines[7] and "armed" in lines[7]
    assert "b2" not in out

    code, out, _ = run_cli(capsys, "limits", "explain", "--bot", "b1", "--json")
    explained = json.loads(out)
    assert explained["state"] == "reduce_only"
    assert explained["halt"]["reason"] == "wind down"
    assert [limit["key"] for limit in explained["deciding"]] == [
        "heartbeat@bot:b1",
        "max_order_notional@bot:b1",
    ]
    assert explained["triggers"][0]["progress"]["last_beat"] is not None

    code, out, _ = run_cli(capsys, "limits", "explain")
    assert out.splitlines()[:2] == [
        "for no workflow, bot or strategy (global only)",
        "trading: ACTIVE",
    ]


def test_heartbeat_beats_a_configured_switch_and_refuses_a_scope_without_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`heartbeat` on a scope with a heartbeat limit beats once and says when it lapses;
    on a scope without one it exits 2 with one line saying so."""
    code, out, err = run_cli(capsys, "heartbeat", "--bot", "b1")
    assert (code, out) == (2, "")
    assert err.startswith("error: invalid field 'scope': expected a scope with a heartbeat limit")
    assert run_cli(capsys, "limits", "set", "heartbeat", "30")[0] == 0
    code, out, _ = run_cli(capsys, "heartbeat", "--global")
    assert code == 0
    assert out.startswith("heartbeat global: lapses at ") and out.endswith(" unless beaten again\n")
    code, out, _ = run_cli(capsys, "heartbeat", "--global", "--json")
    beat = json.loads(out)
    assert (beat["scope"], beat["target"]) == ("global", None)


def _beating(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TRADEFLOW_LOG_LEVEL": "warning"}
    return subprocess.Popen(
        [sys.executable, "-m", "tradeflow.app.cli", "heartbeat", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_heartbeat_every_beats_until_terminated(capsys: pytest.CaptureFixture[str]) -> None:
    """`heartbeat --every S` beats again and again until SIGTERM, then exits 143 without a
    traceback."""
    assert run_cli(capsys, "limits", "set", "heartbeat", "60", "--bot", "b1")[0] == 0
    beating = _beating("--bot", "b1", "--every", "0.01")
    assert beating.stdout is not None
    beats = []
    for line in beating.stdout:
        assert line.startswith("heartbeat bot 'b1': lapses at "), line
        beats.append(line)
        if len(beats) == 3:
            break
    assert len(beats) == 3
    beating.terminate()
    _, err = beating.communicate(timeout=60)
    assert beating.returncode == 143
    assert "Traceback" not in err and "warning: --every" not in err


def test_heartbeat_every_warns_when_the_period_is_not_under_the_ttl(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`heartbeat --every S` with S not under the switch's time to live warns, once, that
    the switch lapses between beats."""
    assert run_cli(capsys, "limits", "set", "heartbeat", "1", "--strategy", "s1")[0] == 0
    beating = _beating("--strategy", "s1", "--every", "30")
    assert beating.stdout is not None and beating.stderr is not None
    assert beating.stdout.readline().startswith("heartbeat strategy 's1': lapses at ")
    warning = beating.stderr.readline()
    beating.terminate()
    beating.communicate(timeout=60)
    assert warning.startswith("warning: --every 30 is not shorter than the time to live")


def test_production_settings_take_the_stack_file_but_never_half_an_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.stack/env`` fills what the environment leaves unset, except the identity: TLS
    files or plaintext chosen in the environment are never mixed with the file's."""
    from tradeflow.app.cli import _stack_env

    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / "env").write_text(
        "export TRADEFLOW_STATE_ADDR=127.0.0.1:1\n"
        "export TRADEFLOW_TLS_CA=/stack/ca.crt\n"
        "export TRADEFLOW_TLS_CERT=/stack/operator.crt\n"
        "export TRADEFLOW_TLS_KEY=/stack/operator.key\n"
    )
    monkeypatch.chdir(tmp_path)
    for key in ("TRADEFLOW_TLS_CA", "TRADEFLOW_TLS_CERT", "TRADEFLOW_TLS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("TRADEFLOW_GRPC_PLAINTEXT", raising=False)
    taken = _stack_env("production")
    assert taken["TRADEFLOW_TLS_CERT"] == "/stack/operator.crt"
    assert taken["TRADEFLOW_STATE_ADDR"] == "127.0.0.1:1"
    monkeypatch.setenv("TRADEFLOW_GRPC_PLAINTEXT", "true")
    plaintext = _stack_env("production")
    assert (
        "TRADEFLOW_TLS_CA" not in plaintext and plaintext["TRADEFLOW_STATE_ADDR"] == "127.0.0.1:1"
    )
    monkeypatch.delenv("TRADEFLOW_GRPC_PLAINTEXT")
    monkeypatch.setenv("TRADEFLOW_TLS_CERT", "/mine/admin.crt")
    mine = _stack_env("production")
    assert mine["TRADEFLOW_TLS_CERT"] == "/mine/admin.crt"
    assert "TRADEFLOW_TLS_KEY" not in mine  # not the operator's key beside the admin's cert
    assert "TRADEFLOW_TLS_CA" not in _stack_env("development")


def _ended_long_ago(count: int) -> list[str]:
    """Write ``count`` executions to the test's state file that completed in 1970, and a
    running one: their ids (the running one last)."""
    conn = open_database(os.environ["TRADEFLOW_SQLITE_PATH"])
    try:
        store = SQLiteStateStore(conn)
        ids = [f"old-{n}" for n in range(count)] + ["still-running"]
        for n, execution_id in enumerate(ids):
            record = kit.execution(execution_id, "aged", started_at=1_000.0 + n)
            if execution_id != "still-running":
                record = replace(record, status=ExecutionStatus.COMPLETED, finished_at=1_001.0 + n)
            asyncio.run(store.write(StateBatch(execution=record)))
    finally:
        conn.close()
    return ids


def test_executions_prune_removes_what_ended_before_the_horizon(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """executions prune removes every execution that ended more than --older-than days ago
    (a running one stays) and says how many; --limit removes at most that many, once."""
    ids = _ended_long_ago(3)
    assert main(["executions", "prune", "--older-than", "1", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 1 execution(s) that ended before ") and "run it again" in out
    assert main(["executions", "prune"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 execution(s)")
    assert main(["executions", "list", "--workflow", "aged"]) == 0
    listed = capsys.readouterr().out
    assert "still-running" in listed and not any(i in listed for i in ids[:-1])


def test_executions_prune_refuses_a_retention_of_zero_days_unless_told(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With TRADEFLOW_RETENTION_DAYS=0 (keep everything) prune refuses (exit 2, saying how
    to prune anyway) unless --older-than is given."""
    _ended_long_ago(1)
    monkeypatch.setenv("TRADEFLOW_RETENTION_DAYS", "0")
    assert main(["executions", "prune"]) == 2
    assert "pass --older-than DAYS" in capsys.readouterr().err
    assert main(["executions", "prune", "--older-than", "0"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 execution(s)")
    assert main(["executions", "prune", "--older-than", "1e300"]) == 2
    assert "--older-than must be at most" in capsys.readouterr().err
