"""Orbax checkpoints of a training run: save every K updates and at the end, restore to resume.

Layout: ``RUN_DIR/checkpoints/<update>/`` (orbax writes into a temporary folder and renames it when
complete, so an interrupted save never replaces a good checkpoint; the newest ``max_to_keep`` are
kept). A missing or unreadable checkpoint raises ``ValueError`` with the path and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/checkpoints`` (absolute)."""
    return Path(run_dir).resolve() / "checkpoints"


def open_manager(run_dir: str | Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A checkpoint manager on ``RUN_DIR/checkpoints`` that keeps the newest ``max_to_keep``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options)


def latest_step(run_dir: str | Path) -> int | None:
    """The newest complete checkpoint's update number, or None when there is none."""
    path = checkpoint_dir(run_dir)
    if not path.is_dir():
        return None
    steps = [int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Save ``state`` (a pytree of arrays) as checkpoint ``step`` and wait until it is on disk."""
    manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def restore(run_dir: str | Path, target: Any, step: int | None = None) -> tuple[Any, int]:
    """Restore checkpoint ``step`` (default: newest) into the structure of ``target``.

    ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` with the saved structure.
    Raises ValueError when there is no checkpoint or it cannot be read (corrupt, or another shape).
    """
    path = checkpoint_dir(run_dir)
    step = latest_step(run_dir) if step is None else int(step)
    if step is None or not (path / str(step)).is_dir():
        raise ValueError(f"no checkpoint to resume from in {path}")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
    try:
        with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False,
                                                                               enable_async_checkpointing=False)) as mgr:
            state = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many kinds; all mean the checkpoint is unusable
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path / str(step)} is unreadable or corrupt ({type(err).__name__}: "
                         f"{reason[:200]})") from err
    bad = [a.shape for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)) if a.shape != b.shape]
    if bad:
        raise ValueError(f"checkpoint {path / str(step)} does not match this configuration")
    return state, step
