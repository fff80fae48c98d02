"""Kill a resumable command mid-run with SIGKILL, run it again, and check nothing was lost or redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_then_resume(
    command: Callable[[Path], list[str]],
    folder: Path,
    records: int,
    kill_after: int,
    resumable: Callable[[Path], Path] = lambda out: out,
) -> None:
    """Run `command(out)` once whole, once killed after `kill_after` finished records and rerun; the two
    outputs must be byte-identical and the partial file (of `resumable(out)`, the file the runner writes)
    must hold every id exactly once."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    whole, cut = folder / "whole.jsonl", folder / "cut.jsonl"
    subprocess.run(command(whole), check=True, env=env, timeout=600)
    partial = resumable(cut).with_name(resumable(cut).name + ".partial.jsonl")
    proc = subprocess.Popen(command(cut), env=env)
    deadline = time.time() + 300
    while time.time() < deadline and (not partial.exists() or partial.read_bytes().count(b"\n") < kill_after):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = partial.read_bytes().count(b"\n")
    assert kill_after <= done_before < records and not cut.exists(), done_before
    subprocess.run(command(cut), check=True, env=env, timeout=600)
    assert cut.read_bytes() == whole.read_bytes()
    ids = [json.loads(line)["id"] for line in partial.read_bytes().splitlines()]
    assert len(ids) == len(set(ids)) == records, "a record was redone or lost"
