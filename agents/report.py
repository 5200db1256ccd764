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


def rollout_latencies(policy_fn, env: Any, params: Any, episodes: int, key) -> np.ndarray:
    """Per-request latencies (s) of ``policy_fn(key, obs)`` (or a baseline ``Policy``) over whole episodes.

    ``params`` is one :class:`EnvParams` (result (episodes, requests)) or L of them stacked along a
    leading axis (result (L, episodes, requests)): the L settings, loads for instance, run in one
    compiled call with the same keys.
    """
    import jax

    from jaxsplit.envs.policies import Policy

    requests = int(env.requests)

    def run(key, params):
        k_reset, k_steps = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, episodes), params)

        def step(carry, k):
            obs, state = carry
            k_act, k_env = jax.random.split(k)
            keys = jax.random.split(k_act, episodes)
            if isinstance(policy_fn, Policy):  # a baseline of jaxsplit.envs.policies
                action = jax.vmap(policy_fn, in_axes=(0, 0, 0, None))(keys, obs, state, params)
            else:
                action = jax.vmap(policy_fn)(keys, obs)
            obs, state, _, _, _, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, episodes), state, action, params)
            return (obs, state), info["latency"]

        _, lat = jax.lax.scan(step, (obs, state), jax.random.split(k_steps, requests))
        return lat.T

    stacked = np.ndim(params.load_min) > 0
    return np.asarray(jax.jit(jax.vmap(run, in_axes=(None, 0)) if stacked else run)(key, params))


def _baseline_policies(env: Any, params: Any, loads: Sequence[float]) -> dict[str, Any]:
    """The registered baseline policies of jaxsplit.envs.policies, if installed, each called as
    ``policy(key, obs, state, params)``; ``best_constant`` with its share searched at ``loads`` on
    ``env`` and ``params`` (its own episodes, :func:`jaxsplit.envs.policies.search_best_constant`)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("jaxsplit.envs.policies") is None:
        return {}
    policies = importlib.import_module("jaxsplit.envs.policies")
    out = {}
    for name in policies.POLICIES:
        options = {}
        if name == "best_constant":
            shares = policies.search_best_constant(env, params, loads)
            options = dict(loads=tuple(float(x) for x in loads), shares=tuple(float(c) for c in shares))
        out[name] = policies.get(name, env, **options)
    return out


def evaluate_against_baselines(trainer: Trainer, runner: RunnerState, loads: Sequence[float], episodes: int,
                               seed: int) -> list[dict[str, Any]]:
    """Mean / p95 / p99 latency (s) with a 95% CI over episodes for ``ppo`` and every baseline at ``loads``.

    Each load fixes rho (load_min = load_max) on the run's environment (clusters still drawn per episode).
    """
    import jax

    from jaxsplit import envs

    config = trainer.config
    env, base_params = envs.make(config.env_name, **dict(config.env_overrides))
    policies = {"ppo": trainer.policy(runner), **_baseline_policies(trainer.env, base_params, loads)}
    # (L, ...): the base params once per load with rho fixed there (as envs.make(..., load=x) sets it)
    loads_a = np.asarray(loads, np.asarray(base_params.load_min).dtype)
    params = jax.tree.map(lambda a: np.broadcast_to(a, (len(loads),) + np.shape(a)), base_params)
    params = params.replace(load_min=loads_a, load_max=loads_a)
    latencies = {name: rollout_latencies(policy_fn, env, params, episodes, jax.random.PRNGKey(seed + 1))
                 for name, policy_fn in policies.items()}  # (L, episodes, requests) each
    results = []
    for i, load in enumerate(loads):
        for name, lat_all in latencies.items():
            lat = lat_all[i]
            per_episode = lat.mean(axis=1)
            ci = 1.96 * per_episode.std(ddof=1) / np.sqrt(len(per_episode)) if len(per_episode) > 1 else 0.0
            results.append(dict(policy=name, load=float(load), mean_latency_s=float(lat.mean()),
                                mean_latency_ci95_s=float(ci), p95_latency_s=float(np.percentile(lat, 95)),
                                p99_latency_s=float(np.percentile(lat, 99)), episodes=episodes))
    return results
