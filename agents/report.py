"""The end of a training run: evaluation against every baseline, plots and report.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .ppo import PPOConfig, RunnerState, Trainer


def plot_training(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Reward and mean latency (per update) against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    steps = np.array([r["env_steps"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, name, label in zip(axes, ("reward", "latency", "utilization"),
                               ("mean reward per request", "mean latency (s)", "request utilisation U")):
        ax.plot(steps, [r[name] for r in rows], lw=1)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO training (rollout averages over the load range)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency_vs_load(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Mean latency against offered load, one line per policy (95% CI as error bars when present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for policy in dict.fromkeys(r["policy"] for r in results):
        pts = sorted((r["load"], r["mean_latency_s"], r.get("mean_latency_ci95_s", 0.0)) for r in results
                     if r["policy"] == policy)
        loads, lat, ci = (np.array(x) for x in zip(*pts))
        ax.errorbar(loads, lat, yerr=ci, marker="o", ms=3, capsize=2, lw=2.2 if policy == "ppo" else 1,
                    label=policy)
    ax.set_xlabel("offered load rho")
    ax.set_ylabel("mean latency (s)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per load: PPO's mean latency, the best baseline's, and PPO's change relative to it (%)."""
    out = []
    for load in sorted({r["load"] for r in results}):
        at = [r for r in results if r["load"] == load]
        ppo = [r for r in at if r["policy"] == "ppo"]
        base = [r for r in at if r["policy"] != "ppo"]
        if not ppo or not base:
            continue
        best = min(base, key=lambda r: r["mean_latency_s"])
        change = 100.0 * (ppo[0]["mean_latency_s"] / best["mean_latency_s"] - 1.0)
        out.append(dict(load=load, ppo=ppo[0]["mean_latency_s"], best=best["policy"],
                        best_latency=best["mean_latency_s"], change_pct=change))
    return out


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else (f"{x:.4g}")


def write_report(run_dir: Path, config: PPOConfig, rows: Sequence[dict[str, float]],
                 results: Sequence[dict[str, Any]]) -> str:
    """Write ``RUN_DIR/report.md`` and return its text."""
    last = rows[-1] if rows else {}
    lines = [f"# PPO run {run_dir.name}", "",
             f"Environment `{config.env_name}` {dict(config.env_overrides) or ''}; {config.num_updates} updates, "
             f"{config.num_updates * config.batch_size:,} environment steps; wall time {last.get('wall_s', 0):.0f} s.",
             "", "![training curve](training_curve.png)", "",
             "## Mean latency (s) by policy and load", "",
             "![latency against load](latency_vs_load.png)", ""]
    loads = sorted({r["load"] for r in results})
    policies = list(dict.fromkeys(r["policy"] for r in results))
    lines.append("| policy | " + " | ".join(f"rho={l:g}" for l in loads) + " |")
    lines.append("|---|" + "---|" * len(loads))
    for policy in policies:
        cells = []
        for load in loads:
            r = next((r for r in results if r["policy"] == policy and r["load"] == load), None)
            ci = r.get("mean_latency_ci95_s") if r else None
            cells.append("" if r is None else _fmt(r["mean_latency_s"]) + (f" ± {_fmt(ci)}" if ci is not None else ""))
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", "## PPO against the best baseline at each load", "",
              "| load | PPO (s) | best baseline | its latency (s) | PPO change |", "|---|---|---|---|---|"]
    for c in comparison_rows(results):
        lines.append(f"| {c['load']:g} | {_fmt(c['ppo'])} | {c['best']} | {_fmt(c['best_latency'])} | "
                     f"{c['change_pct']:+.1f}% |")
    text = "\n".join(lines) + "\n"
    (run_dir / "report.md").write_text(text)
    return text


def evaluate_against_baselines(trainer: Trainer, runner: RunnerState, loads: Sequence[float], episodes: int,
                               seed: int) -> list[dict[str, Any]]:
    """Evaluate the trained policy (named ``ppo``) and every registered baseline at ``loads``."""
    raise NotImplementedError
