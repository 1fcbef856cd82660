"""Node types for the replica fault tests, loaded by executor replicas through
``TRADEFLOW_NODE_MODULES=tf_test_nodes`` (with ``tests/plugins`` on ``PYTHONPATH``).

- ``providers/tf_wait`` waits a given time, so a kill, a pause or a cancel lands while
  an execution runs; it first drops a marker file naming the execution, the block and
  the process running it, so a test knows who runs what without guessing at timing.
- ``providers/tf_crash`` ends the process running it at once (``os._exit``): an
  execution that kills every owner that takes it over. Only for tests.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from tradeflow.engine.model import Block
from tradeflow.engine.nodes import ExecutionContext, Prop, node

__all__ = ["marker_name", "tf_crash", "tf_wait"]


def marker_name(execution_id: str, block_id: str, pid: int) -> str:
    """The file a ``tf_wait`` block drops in its ``marker_dir`` when it starts."""
    return f"{execution_id}.{block_id}.{pid}"


@node(
    "providers",
    "tf_wait",
    properties={
        "seconds": Prop("number", default=0.0, minimum=0.0, doc="how long to wait"),
        "marker_dir": Prop("string", default="", doc="where to drop the start marker"),
    },
    outputs=("done",),
)
async def tf_wait(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """Wait ``seconds``; when ``marker_dir`` is set, first create the marker file there."""
    marker_dir = block.properties["marker_dir"]
    if marker_dir:
        name = marker_name(ctx.execution_id, block.id, os.getpid())
        await asyncio.to_thread(Path(marker_dir, name).touch)
    await asyncio.sleep(float(block.properties["seconds"]))
    return {"done": True}


@node(
    "providers",
    "tf_crash",
    properties={"exit_code": Prop("integer", default=1)},
    outputs=("done",),  # never produced: declared so that later blocks can wait on it
)
async def tf_crash(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """End this process at once, with no cleanup (a crash the execution itself causes)."""
    os._exit(int(block.properties["exit_code"]))
