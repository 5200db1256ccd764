"""The end of a training run: the training curve and report.md.

The evaluation itself is the one of ``jaxsplit evaluate`` (:mod:`jaxsplit.envs.evaluation`); the
report prints the exact command that reproduces its table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxsplit import atomic
from jaxsplit.envs import EnvSpec
from jaxsplit.envs.evaluation import Protocol, markdown_table

from .ppo import PPOConfig


def plot_training(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Reward and the environment's metrics (per update) against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    steps = np.array([r["env_steps"] for r in rows])
    panels = [(name, label) for name, label in (("reward", "mean reward per step"), ("latency", "mean latency (s)"),
                                                ("utilization", "request utilisation U")) if name in rows[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (name, label) in zip(axes[0], panels):
        ax.plot(steps, [r[name] for r in rows], lw=1)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO training (rollout averages over the load range)")
    fig.tight_layout()
    try:
        atomic.savefig(fig, path, dpi=120)
    finally:
        plt.close(fig)


def comparison_rows(results: Sequence[dict[str, Any]], policy: str = "ppo") -> list[dict[str, Any]]:
    """Per load: ``policy``'s mean latency, the best other policy's, and the change relative to it (%)."""
    out = []
    for load in sorted({r["load"] for r in results}):
        at = [r for r in results if r["load"] == load]
        mine = [r for r in at if r["policy"] == policy]
        base = [r for r in at if r["policy"] != policy]
        if not mine or not base:
            continue
        best = min(base, key=lambda r: r["mean_latency_s"])
        change = 100.0 * (mine[0]["mean_latency_s"] / best["mean_latency_s"] - 1.0)
        out.append(dict(load=load, ppo=mine[0]["mean_latency_s"], best=best["policy"],
                        best_latency=best["mean_latency_s"], change_pct=change))
    return out


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def _comparison(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| load | PPO (s) | best baseline | its latency (s) | PPO change |", "|---|---|---|---|---|"]
    for c in comparison_rows(results):
        lines.append(f"| {c['load']:g} | {_fmt(c['ppo'])} | {c['best']} | {_fmt(c['best_latency'])} | "
                     f"{c['change_pct']:+.1f}% |")
    return lines


def write_report(run_dir: Path, spec: EnvSpec, config: PPOConfig, rows: Sequence[dict[str, float]],
                 results: Sequence[dict[str, Any]], command: str,
                 extra: Sequence[tuple[str, Sequence[dict[str, Any]], str]] = (), title: str | None = None,
                 name: str | None = None, protocol: Protocol | None = None) -> str:
    """Write ``RUN_DIR/report.md`` and return its text. ``command`` is the ``jaxsplit evaluate`` command
    line that reproduces ``results``; ``extra`` adds (title, results, command) sections (a generalist's
    other device counts), ``title`` names the main one, ``name`` the run (default: the folder's name);
    ``protocol`` (:class:`~jaxsplit.envs.evaluation.Protocol`) is printed above the tables."""
    last = rows[-1] if rows else {}
    settings = {k: v for k, v in spec.to_json().items() if v is not None}
    lines = [f"# PPO run {name or run_dir.name}", "",
             f"Environment `{spec.env}` {settings}; {config.num_updates} updates, "
             f"{config.num_updates * config.batch_size:,} environment steps; wall time {last.get('wall_s', 0):.0f} s.",
             "", "![training curve](training_curve.png)", "",
             "## Mean latency (s) by policy and load" + (f", {title}" if title else ""), "",
             "![latency against load](latency_vs_load.png)", "",
             *([f"Evaluation protocol: {protocol.describe()}.", ""] if protocol is not None else []),
             "Reproduce this table (mean over episodes ± 95% CI) with:", "", "```bash", command, "```", "",
             markdown_table(results), "",
             "## PPO against the best baseline at each load" + (f", {title}" if title else ""), ""]
    lines += _comparison(results)
    for name, recs, cmd in extra:
        lines += ["", f"## Mean latency (s) by policy and load, {name}", "", "```bash", cmd, "```", "",
                  markdown_table(recs), "", f"## PPO against the best baseline at each load, {name}", ""]
        lines += _comparison(recs)
    text = "\n".join(lines) + "\n"
    atomic.write_text(run_dir / "report.md", text)
    return text
