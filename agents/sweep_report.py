"""A sweep folder's leaderboard and plots, written from the study's records (any worker may write
them; each file is replaced atomically)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxsplit import atomic

from .space import Dimension


def best_baselines(baselines: Sequence[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    """Per load, the baseline record with the lowest mean latency."""
    out: dict[float, dict[str, Any]] = {}
    for row in baselines:
        load = float(row["load"])
        if load not in out or row["mean_latency_s"] < out[load]["mean_latency_s"]:
            out[load] = row
    return out


def _params(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(params.items()))


def leaderboard(records: Sequence[dict[str, Any]], baselines: Sequence[dict[str, Any]], loads: Sequence[float],
                study: str, top: int = 10, command: str | None = None, protocol: str | None = None) -> str:
    """Markdown: the ``top`` complete trials by objective, the best baseline at each load, and the gap
    of the best trial to it; ``protocol`` describes the evaluation episodes (``Protocol.describe``)."""
    done = sorted((r for r in records if r["state"] == "complete"), key=lambda r: r["objective"])
    failed = sum(r["state"] == "fail" for r in records)
    best_base = best_baselines(baselines)
    head = "| rank | trial | parameters | objective (s) | " + " | ".join(f"rho = {l:g}" for l in loads) + " |\n"
    head += "|---:|---:|---|---:|" + "---:|" * len(loads) + "\n"
    lines = [f"# Sweep {study}: leaderboard", "",
             f"{len(done)} complete trials ({failed} failed or interrupted, queued again). Objective: the mean "
             f"latency over the loads, lower is better; each load's cell is the mean latency (s) with its 95% "
             f"half-width." + (f" Evaluation protocol: {protocol}." if protocol else ""), "", head.rstrip("\n")]
    for rank, r in enumerate(done[:top], 1):
        cells = [f"{p['mean_latency_s']:.4g} ± " + ("-" if p["mean_latency_s_ci"] is None or
                                                     not math.isfinite(p["mean_latency_s_ci"]) else
                                                     f"{p['mean_latency_s_ci']:.2g}") for p in r["per_load"]]
        lines.append(f"| {rank} | {r['number']} | {_params(r['params'])} | {r['objective']:.4g} | " + " | ".join(cells) + " |")
    if best_base:
        cells = [f"{best_base[float(l)]['mean_latency_s']:.4g} ({best_base[float(l)]['policy']})" for l in loads]
        objective = float(np.mean([best_base[float(l)]["mean_latency_s"] for l in loads]))
        lines.append(f"| | | best baseline at each load | {objective:.4g} | " + " | ".join(cells) + " |")
        if done:
            gaps = [100 * (p["mean_latency_s"] / best_base[float(p["load"])]["mean_latency_s"] - 1) for p in done[0]["per_load"]]
            lines += ["", "Best trial against the best baseline: " +
                      ", ".join(f"rho = {l:g}: {g:+.1f}%" for l, g in zip(loads, gaps)) + "."]
    if command:
        lines += ["", "Reproduce the best trial's figures (its first seed):", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: Path) -> None:
    atomic.savefig(fig, path, dpi=120)


def plots(out: Path, study: Any, records: Sequence[dict[str, Any]], dims: Sequence[Dimension]) -> list[Path]:
    """objective.png, history.png and (two or more settings, enough trials) importance.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["state"] == "complete"]
    if not done:
        return []
    written = []
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.4), squeeze=False)
    best = min(done, key=lambda r: r["objective"])
    for ax, d in zip(axes[0], dims):
        xs = [r["params"][d.name] for r in done]
        ax.scatter(xs, [r["objective"] for r in done], s=16, alpha=0.7)
        ax.scatter([best["params"][d.name]], [best["objective"]], s=50, color="tab:red", label="best")
        if d.log:
            ax.set_xscale("log")
        ax.set_xlabel(d.name)
        ax.set_ylabel("objective: mean latency (s)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    _save(fig, out / "objective.png")
    written.append(out / "objective.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    order = sorted(done, key=lambda r: r["number"])
    values = [r["objective"] for r in order]
    ax.scatter([r["number"] for r in order], values, s=16, alpha=0.7, label="trial")
    ax.step([r["number"] for r in order], np.minimum.accumulate(values), where="post", color="tab:red",
            label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective: mean latency (s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, out / "history.png")
    written.append(out / "history.png")
    plt.close(fig)

    if len(dims) >= 2 and len(done) >= 4:
        import optuna

        try:
            importance = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError):  # e.g. a setting that never varied among complete trials
            importance = {}
        if importance:
            fig, ax = plt.subplots(figsize=(5, 0.5 + 0.5 * len(importance)))
            names = list(importance)[::-1]
            ax.barh(names, [importance[n] for n in names])
            ax.set_xlabel("importance (fANOVA)")
            fig.tight_layout()
            _save(fig, out / "importance.png")
            written.append(out / "importance.png")
            plt.close(fig)
    return written


def write(out: Path, study: Any, records: Sequence[dict[str, Any]], baselines: Sequence[dict[str, Any]],
          dims: Sequence[Dimension], settings: Any, name: str) -> None:
    command = None
    if (out / "best").exists():
        command = (f"jaxsplit evaluate --checkpoint {out / 'best'} --policy ppo --loads "
                   f"{','.join(f'{l:g}' for l in settings.eval_loads)} --episodes {settings.eval_episodes} --requests "
                   f"{settings.eval_requests} --seed {settings.eval_seed} --warmup {settings.eval_warmup:g} --markdown")
    text = leaderboard(records, baselines, settings.eval_loads, name, command=command,
                       protocol=settings.protocol().describe())
    atomic.write_text(out / "leaderboard.md", text)
    plots(out, study, records, dims)
