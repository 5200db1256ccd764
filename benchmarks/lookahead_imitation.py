"""How much room is there above the best constant share, and can the PPO network hold it?

1. A lookahead planner (not a trained policy): at each request it tries every (cap, floor) rule of
   the ``clip_pairs`` action over the share levels 0.1, 1/4, 1/3, 1/2, 1, and for each simulates
   the next ``--horizon`` requests with that rule kept, on ``--samples`` sampled futures (arrival gaps
   and models drawn afresh: the planner does not know the real future). It picks the rule with the
   least mean total latency. It sees the whole environment state, the reservation table included.
2. Its decisions on randomised episodes (default load range) are the targets of imitation: the PPO
   actor network (same architecture and observation normalisation as ``jaxsplit train``) is fitted
   by cross-entropy to the planner's choices, once on the default ``summary`` observation and once on
   the ``table`` observation (the summary plus the whole reservation table).
3. The planner and both imitations run on the same evaluation episodes as the best constant share.

If the imitation with the table observation holds the planner's gain and the one with the summary
does not, the summary observation (per device only the free share and the next release) is what keeps
a policy of this network from the gain.

    python benchmarks/lookahead_imitation.py           # records into RESULTS.md (about 15 minutes on 2 cores)
    python benchmarks/lookahead_imitation.py --quick   # small, prints only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, load_average, machine, record  # noqa: E402

from jaxsplit import envs  # noqa: E402
from jaxsplit.agents.ppo import PPOConfig, RunningStats, Trainer  # noqa: E402
from jaxsplit.envs.actions import clip_pairs  # noqa: E402
from jaxsplit.envs.evaluation import episode_metrics, run_episodes, with_requests  # noqa: E402

LEVELS = (0.1, 0.25, 1 / 3, 0.5, 1.0)
PAIRS = clip_pairs(LEVELS)  # (15, 2): (cap, floor)


def rule_shares(obs: jax.Array, choice: jax.Array, n: int) -> jax.Array:
    """Shares (n,) of rule ``choice``: every device's free share (obs[:n]) clipped to [floor, cap]."""
    return jnp.clip(obs[:n], PAIRS[choice, 1], PAIRS[choice, 0])


CONSTANT_GRID = (1.0, 0.5, 1 / 3, 0.25, 0.2, 0.1)


def best_constant(env, params, loads, episodes: int, seed: int, warm: int) -> tuple[list[float], np.ndarray]:
    """The constant share of CONSTANT_GRID with the least mean latency at each load, on the episodes
    of ``run_episodes(..., episodes, seed)``: (its share per load, its per-episode mean latency
    (loads, episodes))."""
    n = env.num_devices
    grid = jnp.asarray(CONSTANT_GRID, jnp.float32)
    const = lambda key, o, state, p, c: jnp.full((n,), c, jnp.float32)
    consts = episode_metrics(run_episodes(env, params, const, loads, episodes, seed, aux=grid),
                             warm)["mean_latency_s"]  # (G, loads, episodes)
    best = consts.mean(-1).argmin(0)
    return [CONSTANT_GRID[int(b)] for b in best], consts[best, np.arange(len(loads))]


def paired_cells(lat: np.ndarray, base: np.ndarray) -> list[str]:
    """Table cells per load: mean latency of ``lat`` (loads, episodes) and, in brackets, its paired
    difference to ``base`` (same episodes) relative to base's mean, with a 95% interval over episodes."""
    cells = []
    for j in range(lat.shape[0]):
        rel = (lat[j] - base[j]) / base[j].mean()
        ci = 1.96 * np.std(rel, ddof=1) / np.sqrt(len(rel))
        cells.append(f"{lat[j].mean():.4f} ({100 * rel.mean():+.1f}% +- {100 * ci:.1f})")
    return cells


def make_planner(env, params, horizon: int, samples: int):
    """``plan(key, obs, state) -> (rule index, costs (P,))``: the rule with the least sampled cost."""
    n = env.num_devices
    long_env = with_requests(env, 10**9)  # no auto-reset inside a lookahead

    def cost(state, obs, choice, keys):
        def body(carry, k):
            o, s = carry
            o2, s2, _, _, _, info = long_env.step(k, s, rule_shares(o, choice, n), params)
            return (o2, s2), info["latency"]

        return jax.lax.scan(body, (obs, state), keys)[1].sum()

    def plan(key, obs, state):
        futures = jax.random.split(key, samples * horizon).reshape(samples, horizon)
        costs = jax.vmap(lambda c: jax.vmap(lambda ks: cost(state, obs, c, ks))(futures).mean())(
            jnp.arange(PAIRS.shape[0]))
        return jnp.argmin(costs), costs

    return plan


def teacher_data(env, params, plan, episodes: int, seed: int, batch: int):
    """Planner decisions on randomised episodes: (table observations (D, obs_dim), costs (D, P))."""
    def episode(key):
        k_reset, k_run, k_plan = jax.random.split(key, 3)
        obs, state = env.reset(k_reset, params)

        def body(carry, ks):
            obs, state = carry
            k_step, k_plan = ks
            choice, costs = plan(k_plan, obs, state)
            o2, s2, *_ = env.step(k_step, state, rule_shares(obs, choice, env.num_devices), params)
            return (o2, s2), (obs, costs)

        keys = (jax.random.split(k_run, env.requests), jax.random.split(k_plan, env.requests))
        return jax.lax.scan(body, (obs, state), keys)[1]

    fn = jax.jit(jax.vmap(episode))
    obs, costs = [], []
    for start in range(0, episodes, batch):
        o, c = fn(jax.random.split(jax.random.key(seed + start), min(batch, episodes - start)))
        obs.append(np.asarray(o).reshape(-1, o.shape[-1]))
        costs.append(np.asarray(c).reshape(-1, c.shape[-1]))
        print(f"  planner data: {min(start + batch, episodes)}/{episodes} episodes", flush=True)
    return np.concatenate(obs), np.concatenate(costs)


def soft_targets(costs: np.ndarray, temperature: float) -> np.ndarray:
    """Equal-cost rules share the target mass (many rules give the same shares on an idle cluster)."""
    best = costs.min(1, keepdims=True)
    z = (costs - best) / np.maximum(best, 1e-9)
    w = np.exp(-z / temperature)
    return w / w.sum(1, keepdims=True)


def imitate(observation: str, obs: np.ndarray, targets: np.ndarray, epochs: int, seed: int):
    """Fit the PPO actor (``jaxsplit train`` network, clip_pairs over LEVELS) to the targets; returns
    (trainer, runner state) whose ``trainer.policy(runner)`` is the imitation (its action: the index of
    a rule, which the trainer's action wrapper ``trainer.env`` decodes into shares)."""
    spec = envs.EnvSpec(observation=observation, action="clip_pairs", distribution="categorical", share_levels=4,
                        pair_levels=LEVELS)
    trainer = Trainer(PPOConfig(), *spec.make())
    runner = jax.jit(trainer.init)(jax.random.PRNGKey(seed), trainer.default_hparams())
    x = jnp.asarray(obs)
    stats = RunningStats(mean=x.mean(0), var=x.var(0), count=jnp.float32(len(obs)))
    x = stats.normalize(x)
    t = jnp.asarray(targets, jnp.float32)
    opt = optax.adam(1e-3)

    def loss(p, xb, tb):
        (logits,), _ = trainer.network.apply(p, xb)
        return -(tb * jax.nn.log_softmax(logits[:, 0])).sum(-1).mean()

    @jax.jit
    def epoch(p, s, key):
        idx = jax.random.permutation(key, x.shape[0])[: x.shape[0] // 512 * 512].reshape(-1, 512)

        def step(c, i):
            p, s = c
            g = jax.grad(loss)(p, x[i], t[i])
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, s), _ = jax.lax.scan(step, (p, s), idx)
        return p, s, loss(p, x, t)

    params, state = runner.params, opt.init(runner.params)
    key = jax.random.key(seed)
    for e in range(epochs):
        key, k = jax.random.split(key)
        params, state, value = epoch(params, state, k)
    print(f"  imitation ({observation}): cross-entropy {float(value):.3f}", flush=True)
    return trainer, runner.replace(params=params, obs_stats=stats)


def _args() -> argparse.Namespace:
    """The command-line options; ``--quick`` replaces the sizes by a tiny run's."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loads", default="0.3,0.6,0.9,1.2")
    ap.add_argument("--horizon", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--teacher-episodes", type=int, default=256)
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="tiny run, no RESULTS.md update")
    args = ap.parse_args()
    if args.quick:
        args.horizon, args.samples, args.teacher_episodes, args.eval_episodes, args.epochs = 8, 2, 8, 4, 3
    return args


def _evaluate(env, summary_env, params, plan, imitations: dict, loads: list[float],
              episodes: int) -> tuple[list[float], np.ndarray, dict[str, np.ndarray]]:
    """The best constant share, the planner and both imitations on the same evaluation episodes;
    (the constant's share per load, its latency (loads, episodes), row name -> latency (s)
    (loads, episodes))."""
    n = env.num_devices
    warm = int(0.1 * env.requests)

    def planner_act(key, o, state, p, aux):
        choice, _ = plan(key, o, state)
        return rule_shares(o, choice, n)

    def imitation_act(kind):
        trainer, runner = imitations[kind]
        policy = trainer.policy(runner)
        cut = env.obs_dim if kind == "table" else summary_env.obs_dim
        # the policy's action is a rule index; the action wrapper turns it into shares (free shares clipped)
        return lambda key, o, state, p, aux: trainer.env.decode(policy(key, o[:cut]), state, p)

    mean = lambda recs: episode_metrics(recs, warm)["mean_latency_s"]  # (..., loads, episodes)
    shares, best_const = best_constant(env, params, loads, episodes, 1000, warm)
    rows = {"lookahead planner": mean(run_episodes(env, params, planner_act, loads, episodes, 1000))}
    for kind in ("table", "summary"):
        rows[f"imitation, {kind} observation"] = mean(run_episodes(env, params, imitation_act(kind), loads,
                                                                   episodes, 1000))
    return shares, best_const, rows


def _table(loads: list[float], shares: list[float], best_const: np.ndarray, rows: dict[str, np.ndarray]) -> str:
    """Mean latency per load of the best constant and of every row, with the paired difference to it."""
    head = ("| policy | " + " | ".join(f"rho = {rho:g}" for rho in loads) + " |\n|---|"
            + "---:|" * len(loads))
    lines = [head, "| best constant | " + " | ".join(
        f"{best_const[j].mean():.4f} (c = {shares[j]:.3g})" for j in range(len(loads))) + " |"]
    for name, lat in rows.items():
        lines.append(f"| {name} | " + " | ".join(paired_cells(lat, best_const)) + " |")
    return "\n".join(lines)


def main() -> None:
    args = _args()
    loads = [float(v) for v in args.loads.split(",")]
    t0 = time.perf_counter()
    env, params = envs.make("alloc-v0", observation="table")
    summary_env, _ = envs.make("alloc-v0")
    plan = make_planner(env, params, args.horizon, args.samples)

    obs, costs = teacher_data(env, params, plan, args.teacher_episodes, 5000, 32)
    targets = soft_targets(costs, 0.003)
    imitations = {kind: imitate(kind, obs if kind == "table" else obs[:, :summary_env.obs_dim], targets,
                                args.epochs, 0)
                  for kind in ("table", "summary")}
    shares, best_const, rows = _evaluate(env, summary_env, params, plan, imitations, loads, args.eval_episodes)
    seconds = time.perf_counter() - t0

    table = _table(loads, shares, best_const, rows)
    print(table)
    print(f"{seconds:.0f} s")
    if args.quick:
        return
    body = (f"### Lookahead planner and its imitation (`benchmarks/lookahead_imitation.py`)\n\n"
            f"Command: `{command()}`  \nMachine: {machine()}; load average {load_average()}  \n"
            f"Revision: {git_revision()}; {seconds:.0f} s\n\n"
            f"Planner: every (cap, floor) rule over the share levels 0.1, 1/4, 1/3, 1/2, 1 (15 rules), each kept "
            f"for {args.horizon} requests on {args.samples} sampled futures, least mean total latency wins. "
            f"Imitation: the `jaxsplit train` actor network (MLP 64-64, categorical over the 15 rules) fitted by "
            f"cross-entropy ({args.epochs} epochs) to the planner's choices on {args.teacher_episodes} randomised "
            f"episodes ({args.teacher_episodes * env.requests:,} decisions; default load range 0.2-1.5). Evaluation: "
            f"the same {args.eval_episodes} episodes of 256 requests per load for every row (randomised clusters, "
            f"first 10% left out); mean latency in seconds and, in brackets, the paired difference to the best "
            f"constant share (searched over 1, 1/2, 1/3, 1/4, 0.2, 0.1 on these episodes) with its 95% interval "
            f"over episodes.\n\n{table}\n")
    record("lookahead-imitation", body)


if __name__ == "__main__":
    main()
