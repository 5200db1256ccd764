"""Orbax checkpoints of a training run: save every K updates and at the end, restore to resume.

Layout: ``RUN_DIR/checkpoints/<update>/`` (orbax writes into a temporary folder and renames it when
complete, so an interrupted save never replaces a good checkpoint; the newest ``max_to_keep`` are
kept). A missing or unreadable checkpoint raises ``ValueError`` with the path and the reason.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path
from typing import Any, Iterator

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
        with _quiet_orbax(), ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
                create=False, enable_async_checkpointing=False)) as mgr:
            state = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many kinds; all mean the checkpoint is unusable
        text = reason(err)
        if _MISMATCH.search(text):
            raise ValueError(f"checkpoint {path / str(step)} does not match the run's config.json (the network or "
                             f"environment it describes has other shapes: {_clip(text, 160)})") from None
        raise ValueError(f"checkpoint {path / str(step)} is unreadable or corrupt ({type(err).__name__}: "
                         f"{_clip(text, 200)})") from None
    bad = [a.shape for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)) if a.shape != b.shape]
    if bad:
        raise ValueError(f"checkpoint {path / str(step)} does not match the run's config.json")
    return state, step


#: orbax's words for a checkpoint whose structure or shapes differ from the requested ones
_MISMATCH = re.compile(r"structure mismatch|not compatible with the stored shape|not found in metadata|"
                       r"shape mismatch|incompatible shape", re.I)
#: Python object reprs (``<bound method ... at 0x...>``) that some library errors embed
_REPR = re.compile(r"<[^<>]*(?: at 0x[0-9a-f]+|bound method|function |object )[^<>]*>", re.I)


def reason(err: BaseException) -> str:
    """The first line of an error, without object reprs, at most 400 characters."""
    text, before = str(err), None
    while text != before:  # reprs nest: <bound method ... of <object at 0x...>>
        before, text = text, _REPR.sub("", text)
    text = text.strip()
    text = text.splitlines()[0].strip() if text else ""
    text = re.sub(r"\s+", " ", text).rstrip(" :;,(")
    return text[:400] or type(err).__name__


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 3].rstrip() + "..."


def _drop_closed_loop_callbacks() -> None:
    """After a failed read, tensorstore still completes its pending futures and calls back into the
    asyncio loop that orbax already closed: each call ends in an unraisable "Event loop is closed"
    RuntimeError that Python prints with its traceback. Those are dropped (process-wide, once); every
    other unraisable exception goes to the previous hook."""
    if getattr(sys.unraisablehook, "_jaxsplit", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
            return
        previous(unraisable)

    hook._jaxsplit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """orbax's absl log lines (a missing or unparsable metadata file) stay off standard error, and so
    do tensorstore's late callbacks into a closed event loop: the ValueError that follows says what
    is wrong."""
    _drop_closed_loop_callbacks()
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
