"""PPO against every baseline policy: mean latency by offered load, several seeds, 95% confidence intervals.

What it does, in one run:

1. Trains ``--seeds`` PPO agents (the default configuration of ``jaxsplit train``, ``--timesteps``
   environment steps each, ``--update-epochs`` passes over each rollout), one after the other with one
   compiled ``jit(train)``.
2. Evaluates every agent (deterministic policy) and every baseline of ``jaxsplit.envs.policies`` at
   ``--loads`` on the default randomised clusters and on a fixed cluster (``--cluster``, the instance
   format; the agents never saw it in training). Every policy runs on the same episodes; best_constant
   and best_clip first search their per-load tables on episodes of their own (``jaxsplit.envs.evaluate``).
3. The ablation: the same PPO trained and evaluated with the equal split in place of the closed form
   inside the environment (``--no-ablation`` skips it).

Every policy runs on the same seeds x episodes episodes. PPO's figure is the mean over seeds of each
seed's mean latency, with a 95% t-interval over the seeds; a baseline's figure is its mean over the
episodes with a 95% normal interval.
The goal (at loads >= 0.9, PPO at least 10% below the best baseline; at lower loads within 3%) is
checked against the best baseline at each load. Results go to benchmarks/RESULTS.md and
benchmarks/ppo_results.png.

    python benchmarks/ppo_results.py                 # 5 seeds, full length (tens of minutes on 2 cores)
    python benchmarks/ppo_results.py --quick         # 2 seeds, short training, no RESULTS.md update
    python benchmarks/ppo_results.py --timesteps 48000000 --update-epochs 2 --no-ablation --tag long
                                                     # longer training, its own section of RESULTS.md

With ``--tag NAME`` the figures go to the section ``ppo-results-NAME`` of RESULTS.md and to
``ppo_results_NAME.json`` / ``.png``, beside those of the default configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, machine, record  # noqa: E402

from jaxsplit.agents.ppo import PPOConfig, make_train  # noqa: E402
from jaxsplit.envs import EnvSpec, load_cluster  # noqa: E402
from jaxsplit.envs import policies as policies_mod  # noqa: E402
from jaxsplit.envs.evaluation import episode_metrics, evaluate, run_episodes  # noqa: E402

HERE = Path(__file__).resolve().parent


def t_interval(values: np.ndarray) -> float:
    """Half-width of the 95% Student-t interval of the mean of ``values`` (n >= 2)."""
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def settings_of(split: str, timesteps: int, update_epochs: int) -> tuple[EnvSpec, PPOConfig]:
    """The ``jaxsplit train`` defaults with the split rule, the length and the epochs replaced."""
    spec = EnvSpec(split=None if split == "closed_form" else split)
    return spec, PPOConfig(total_timesteps=timesteps, update_epochs=update_epochs)


def make_trainer(split: str, timesteps: int, update_epochs: int):
    spec, config = settings_of(split, timesteps, update_epochs)
    return make_train(config, *spec.make())


def train_agents(split: str, seeds: int, timesteps: int, update_epochs: int):
    """Train ``seeds`` agents of the ``jaxsplit train`` configuration with ``timesteps`` environment steps
    and ``update_epochs`` passes per rollout; (trainer, runners, seconds).

    The agents are trained one after the other by one jitted ``train`` (compiled once), as for the
    recorded figures; ``jaxsplit.agents.population.train_population`` would train them as one
    population in one call (same agents up to float rounding).
    """
    train = make_trainer(split, timesteps, update_epochs)
    trainer = train.trainer
    run = jax.jit(train)
    t0 = time.perf_counter()
    runners = []
    for seed in range(seeds):
        runner, _ = run(jax.random.PRNGKey(seed))
        params, obs_stats = jax.device_get((runner.params, runner.obs_stats))  # waits for the run
        runners.append(SimpleNamespace(params=params, obs_stats=obs_stats))
        print(f"  seed {seed} done after {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    stacked = SimpleNamespace(params=jax.tree.map(lambda *x: np.stack(x), *[r.params for r in runners]),
                              obs_stats=jax.tree.map(lambda *x: np.stack(x), *[r.obs_stats for r in runners]))
    return trainer, stacked, seconds


def evaluate_agents(trainer, runners, params, loads, episodes: int) -> dict[float, dict]:
    """Every agent (deterministic policy) on the baselines' episodes, all agents in one vmapped call.

    Per load, a record with the field names of :mod:`jaxsplit.envs.evaluation`: ``mean_latency_s`` is
    the mean over agents of each agent's mean latency, ``mean_latency_s_ci`` its 95% t-interval over
    the agents, ``seeds`` the per-agent mean latencies.
    """
    def act(key, obs, state, env_params, aux):
        net_params, obs_stats = aux
        return trainer.policy(SimpleNamespace(params=net_params, obs_stats=obs_stats))(key, obs)

    aux = (runners.params, runners.obs_stats)
    recs = run_episodes(trainer.env, params, act, loads, episodes, seed=1000, aux=aux)  # (P, loads, episodes, R)
    metrics = episode_metrics(recs, int(0.1 * trainer.env.requests))
    out = {}
    for i, load in enumerate(loads):
        lat = metrics["mean_latency_s"][:, i].mean(-1)
        out[load] = dict(policy="ppo", load=float(load), mean_latency_s=float(lat.mean()),
                         mean_latency_s_ci=t_interval(lat), seeds=lat.tolist(),
                         p99_latency_s=float(metrics["p99_latency_s"][:, i].mean()),
                         request_utilization=float(metrics["request_utilization"][:, i].mean()))
    return out


def evaluate_baselines(env, params, loads, seeds: int, episodes: int) -> dict[str, dict[float, dict]]:
    """Every registered baseline on the same episodes as the agents (seeds x episodes per load)."""
    out = {}
    for name in policies_mod.registered():
        rows = evaluate(name, env, params, loads, episodes=episodes * seeds, seed=1000)
        out[name] = {r["load"]: r for r in rows}  # the records of the one evaluation path
        print(f"  {name:14s} " + "  ".join(f"{l}: {out[name][l]['mean_latency_s']:.4g}" for l in loads), flush=True)
    return out


def table(ppo: dict, baselines: dict, loads) -> tuple[str, list[dict]]:
    """Markdown table of mean latency (s) +- 95% CI, and the per-load comparison with the best baseline."""
    head = "| policy | " + " | ".join(f"rho = {l}" for l in loads) + " |\n|---|" + "---:|" * len(loads) + "\n"
    lines = ["| **ppo** | " + " | ".join(f"**{ppo[l]['mean_latency_s']:.4g} +- {ppo[l]['mean_latency_s_ci']:.2g}**" for l in loads) + " |"]
    for name, rows in baselines.items():
        lines.append(f"| {name} | " + " | ".join(f"{rows[l]['mean_latency_s']:.4g} +- {rows[l]['mean_latency_s_ci']:.2g}" for l in loads) + " |")
    verdicts = []
    for l in loads:
        best = min(baselines, key=lambda n: baselines[n][l]["mean_latency_s"])
        change = 100.0 * (ppo[l]["mean_latency_s"] / baselines[best][l]["mean_latency_s"] - 1.0)
        goal = change <= -10.0 if l >= 0.9 else change <= 3.0
        verdicts.append(dict(load=l, best=best, best_mean=baselines[best][l]["mean_latency_s"], ppo=ppo[l]["mean_latency_s"],
                             change_pct=change, goal=("met" if goal else "NOT met")))
    lines.append("")
    lines.append("| rho | best baseline | its latency (s) | PPO (s) | PPO vs best | goal |\n|---:|---|---:|---:|---:|---|")
    for v in verdicts:
        target = "<= -10%" if v["load"] >= 0.9 else "<= +3%"
        lines.append(f"| {v['load']} | {v['best']} | {v['best_mean']:.4g} | {v['ppo']:.4g} | {v['change_pct']:+.1f}% "
                     f"| {target}: {v['goal']} |")
    return head + "\n".join(lines) + "\n", verdicts


def plot(panels: list[tuple[str, dict, dict]], loads, path: Path) -> None:
    """Mean latency against load, one panel per setting, one line per policy (95% CI error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, ppo, baselines) in zip(axes[0], panels):
        for name, rows in baselines.items():
            ax.errorbar(loads, [rows[l]["mean_latency_s"] for l in loads], yerr=[rows[l]["mean_latency_s_ci"] for l in loads], marker="o",
                        ms=3, capsize=2, lw=1, label=name)
        ax.errorbar(loads, [ppo[l]["mean_latency_s"] for l in loads], yerr=[ppo[l]["mean_latency_s_ci"] for l in loads], marker="s", ms=4,
                    capsize=3, lw=2.4, color="black", label="ppo")
        ax.set_yscale("log")
        ax.set_xlabel("offered load rho")
        ax.set_ylabel("mean latency (s)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="PPO agents (seeds) per setting")
    ap.add_argument("--timesteps", type=int, default=None,
                    help="environment steps per agent (default: jaxsplit train's default)")
    ap.add_argument("--update-epochs", type=int, default=None,
                    help="passes over each rollout (default: jaxsplit train's default)")
    ap.add_argument("--tag", default=None,
                    help="record in the RESULTS.md section ppo-results-TAG and ppo_results_TAG.json/.png "
                         "(for a configuration other than the main job's)")
    ap.add_argument("--loads", default="0.3,0.6,0.9,1.2", help="offered loads of the evaluation")
    ap.add_argument("--episodes", type=int, default=8,
                    help="evaluation episodes per seed and load (every policy runs on seeds x episodes episodes)")
    ap.add_argument("--cluster", default=str(HERE.parent / "examples" / "vgg16_cluster.json"),
                    help="fixed cluster of the second evaluation (instance format; shares ignored)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the equal-split ablation")
    ap.add_argument("--agents", default="runs/ppo_results",
                    help="folder where the trained agents are kept (for --reuse-agents)")
    ap.add_argument("--reuse-agents", action="store_true",
                    help="evaluate the agents kept by an earlier run of the same size instead of training")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 200k steps, no RESULTS.md update")
    return ap


def _resolve(args: argparse.Namespace) -> tuple[list[float], int, int, str, int]:
    """(loads, environment steps per agent, epochs, file stem, seeds) from ``args``, checked."""
    loads = [float(x) for x in args.loads.split(",")]
    timesteps = args.timesteps or PPOConfig().total_timesteps
    epochs = args.update_epochs or PPOConfig().update_epochs
    stem = "ppo_results" + (f"_{args.tag}" if args.tag else "")
    seeds = args.seeds
    if args.quick:
        seeds, timesteps = 2, min(timesteps, 200_000)
    if seeds < 2:
        raise SystemExit("--seeds must be at least 2 for a confidence interval")
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", args.tag):
        raise SystemExit(f"--tag must be letters, digits, '-' or '_' (it names a file and a section), got {args.tag!r}")
    return loads, timesteps, epochs, stem, seeds


def _agents_of(args: argparse.Namespace, split: str, seeds: int, timesteps: int, epochs: int):
    """The ``seeds`` agents of one split rule, trained (and kept under ``--agents``) or, with
    ``--reuse-agents``, read from the file of the same configuration; (trainer, runners, seconds)."""
    spec, ppo_config = settings_of(split, timesteps, epochs)
    config = {"env": spec.to_json(), "ppo": ppo_config.to_json()}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    saved = Path(args.agents) / f"ppo_agents_{split}_{seeds}x{timesteps}_{digest}.pkl"  # the config's own file
    if args.reuse_agents and saved.exists():
        with open(saved, "rb") as fh:
            trainer_args, runners, seconds = pickle.load(fh)
        trainer = make_trainer(**trainer_args).trainer
        print(f"reusing the {seeds} agents of {saved} (trained in {seconds:.0f} s)", flush=True)
    else:
        print(f"training {seeds} agents, split {split}, {timesteps:,} steps each ...", flush=True)
        trainer, runners, seconds = train_agents(split, seeds, timesteps, epochs)
        print(f"  trained in {seconds:.0f} s ({seeds * timesteps / seconds:,.0f} env-steps/s)", flush=True)
        saved.parent.mkdir(parents=True, exist_ok=True)
        with open(saved, "wb") as fh:
            pickle.dump((dict(split=split, timesteps=timesteps, update_epochs=epochs), runners, seconds), fh)
    return trainer, runners, seconds


def _evaluate_settings(args: argparse.Namespace, trainer, runners, loads: list[float],
                       seeds: int) -> dict[str, tuple[dict, dict]]:
    """The agents and every baseline on the randomised clusters and on the fixed cluster;
    label -> (PPO records per load, baseline -> records per load)."""
    env, params = trainer.env, trainer.env_params
    fixed_params = env.default_params(cluster=load_cluster(args.cluster))
    results = {}
    for label, p in (("randomised clusters", params), (f"fixed cluster {Path(args.cluster).name}", fixed_params)):
        print(f"evaluating on {label} ...", flush=True)
        ppo = evaluate_agents(trainer, runners, p, loads, args.episodes * seeds)
        print(f"  {'ppo':14s} " + "  ".join(f"{l}: {ppo[l]['mean_latency_s']:.4g}" for l in loads), flush=True)
        results[label] = (ppo, evaluate_baselines(env, p, loads, seeds, args.episodes))
    return results


def _evaluate_ablation(args: argparse.Namespace, setting: tuple, loads: list[float],
                       seeds: int) -> tuple[dict, dict, float]:
    """The equal-split agents and constant 0.5 in the equal-split environment; (PPO records per load,
    constant records per load, training seconds)."""
    eq_trainer, eq_runners, eq_s = setting
    print("evaluating the equal-split ablation ...", flush=True)
    eq_ppo = evaluate_agents(eq_trainer, eq_runners, eq_trainer.env_params, loads, args.episodes * seeds)
    eq_best = evaluate(policies_mod.get("constant", eq_trainer.env, c=0.5), eq_trainer.env, eq_trainer.env_params,
                       loads, episodes=args.episodes * seeds, seed=1000, name="constant_0.5")
    return eq_ppo, {r["load"]: r for r in eq_best}, eq_s


def _tables(results: dict[str, tuple[dict, dict]], ablation: tuple | None, loads: list[float]) -> str:
    """One table per setting (with its comparison to the best baseline), then the ablation's table."""
    sections = []
    for label, (ppo, baselines) in results.items():
        text, _ = table(ppo, baselines, loads)
        sections.append(f"#### {label}\n\n{text}")
    body = "\n".join(sections)
    if ablation is not None:
        eq_ppo, eq_const, eq_s = ablation
        ppo_cf = results["randomised clusters"][0]
        rows = ["| rho | PPO, closed form (s) | PPO, equal split (s) | equal / closed form | constant 0.5, equal split (s) |",
                "|---:|---:|---:|---:|---:|"]
        for l in loads:
            rows.append(f"| {l} | {ppo_cf[l]['mean_latency_s']:.4g} +- {ppo_cf[l]['mean_latency_s_ci']:.2g} | {eq_ppo[l]['mean_latency_s']:.4g} +- "
                        f"{eq_ppo[l]['mean_latency_s_ci']:.2g} | {eq_ppo[l]['mean_latency_s'] / ppo_cf[l]['mean_latency_s']:.2f}x | "
                        f"{eq_const[l]['mean_latency_s']:.4g} |")
        body += ("\n#### Ablation: the equal split inside the environment (randomised clusters)\n\n"
                 + "\n".join(rows) + "\n")
    return body


def _header(args: argparse.Namespace, seeds: int, timesteps: int, epochs: int, train_s: float, requests: int,
            png: Path) -> str:
    """The recorded section's heading and its paragraph on the training and evaluation settings."""
    spec, cfg = settings_of("closed_form", timesteps, epochs)
    defaults = PPOConfig()
    changed = [f"--{name.replace('_', '-')} {value}" for name, value, default in
               (("total_timesteps", timesteps, defaults.total_timesteps), ("update_epochs", epochs, defaults.update_epochs))
               if value != default]
    which = ("the default `jaxsplit train` configuration" if not changed else
             f"the `jaxsplit train` configuration with {' '.join(changed)}")
    levels = (f"the (cap, floor) pairs of the levels {', '.join(f'{v:.3g}' for v in spec.pair_levels)}"
              if spec.action == "clip_pairs" and spec.pair_levels else f"share levels {spec.share_levels}")
    return (f"### PPO against the baselines{f' ({args.tag})' if args.tag else ''}\n\n`{command()}` (rev {git_revision()}) on {machine()}.\n\n"
            f"{seeds} seeds x {timesteps:,} environment steps each, trained one after the other ({which}: "
            f"{cfg.num_envs} envs x {cfg.num_steps} steps per update, {cfg.update_epochs} epochs x "
            f"{cfg.num_minibatches} minibatches, lr {cfg.lr}, gamma {cfg.gamma}, entropy "
            f"{cfg.ent_coef}, action {spec.action!r}, {spec.distribution} over {levels}, "
            f"environment {spec.env} with {dict(spec.overrides())}); training took {train_s:.0f} s for all seeds. Evaluation: the same "
            f"{args.episodes * seeds} episodes of {requests} requests for every policy and load (10% warm-up left out), deterministic policy. "
            f"Mean latency in seconds, +- the 95% interval (PPO: t over seeds; baselines: over episodes). "
            f"Plot: [{png.name}]({png.name}).\n\n")


def main() -> None:
    args = _parser().parse_args()
    loads, timesteps, epochs, stem, seeds = _resolve(args)
    settings = {split: _agents_of(args, split, seeds, timesteps, epochs)
                for split in ("closed_form",) + (() if args.no_ablation else ("equal",))}

    trainer, runners, train_s = settings["closed_form"]
    results = _evaluate_settings(args, trainer, runners, loads, seeds)
    raw = {label: {"ppo": ppo, "baselines": baselines} for label, (ppo, baselines) in results.items()}
    if not args.quick:  # the raw figures, kept even if a later step fails
        (HERE / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
    ablation = _evaluate_ablation(args, settings["equal"], loads, seeds) if "equal" in settings else None

    body = _tables(results, ablation, loads)
    print(body)
    if args.quick:
        print("(quick run: RESULTS.md not updated)")
        return
    png = HERE / f"{stem}.png"
    plot([(label, ppo, baselines) for label, (ppo, baselines) in results.items()], loads, png)
    header = _header(args, seeds, timesteps, epochs, train_s, trainer.env.requests, png)
    record("ppo-results" + (f"-{args.tag}" if args.tag else ""), header + body)
    print(f"recorded in {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
