"""Checkpoints a crash cannot spoil: each one is sealed once fully written, and resuming picks the newest
sealed one.

transformers writes a checkpoint file by file (weights, config, optimizer, scheduler, RNG state, trainer
state last) straight into `checkpoint-N`; a process killed in between leaves a folder that looks like a
checkpoint and crashes the resume. After the Trainer has saved, `SealCheckpoint` flushes the folder to
disk and writes a `vialign-complete` marker by atomic rename; `resume_target` picks the newest folder
with the marker (or, for checkpoints written before markers, whose trainer state parses) and removes
newer, unfinished ones, which the resumed run writes again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from transformers import TrainerCallback

SEAL = "vialign-complete"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def seal(folder: Path) -> None:
    fsync_tree(folder)
    partial = folder / f".{SEAL}.partial"
    partial.write_text("complete\n")
    os.replace(partial, folder / SEAL)


def is_complete(folder: Path) -> bool:
    if (folder / SEAL).is_file():
        return True
    try:  # written before markers: the trainer state is the last file transformers writes
        json.loads((folder / "trainer_state.json").read_text())
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def checkpoints_by_step(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found)


class SealCheckpoint(TrainerCallback):
    """Seal each checkpoint after the Trainer has written all of it (the main process only)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                seal(folder)
        return control


def resume_target(checkpoints: Path, resume: str | bool | None, main_process: bool = True) -> str | None:
    """What to resume from: a named checkpoint (refused when unfinished), or for `True` ('last') the
    newest complete one, the main process removing newer unfinished ones; None (a fresh start, said
    on stderr) when there is none. Every process reaches the same answer."""
    if not resume:
        return None
    if resume is not True:
        named = Path(resume)
        if not named.is_dir() or not is_complete(named):
            raise ValueError(
                f"{named} is not a complete checkpoint (its save was interrupted, or it is not one)"
            )
        return str(named)
    found = checkpoints_by_step(checkpoints)
    complete = [(step, path) for step, path in found if is_complete(path)]
    newest = complete[-1] if complete else None
    for step, path in found:
        if main_process and (newest is None or step > newest[0]):
            print(f"removing unfinished checkpoint {path} (its save was interrupted)", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)
    if main_process:
        said = (
            f"resuming from {newest[1]}"
            if newest
            else f"no complete checkpoint in {checkpoints}: starting fresh"
        )
        print(said, file=sys.stderr)
    return str(newest[1]) if newest else None


def whole_run_loss(log_history: list[dict], resumed_at: int, session_loss: float, final_step: int) -> float:
    """Mean training loss over every step of the run, also after a resume: the logged losses up to the
    resumed step (restored with the trainer state), weighted by the steps each covers, and this
    session's mean over the rest."""
    if final_step <= 0:
        return session_loss
    before, previous = 0.0, 0
    for row in log_history:
        if "loss" in row and row.get("step", 0) <= resumed_at:
            before += row["loss"] * (row["step"] - previous)
            previous = row["step"]
    return (before + session_loss * (final_step - resumed_at)) / final_step
