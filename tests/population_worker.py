"""Worker for the population tests: trains one small population and writes its results as .npz.

usage: python population_worker.py OUT.npz MODE [COORDINATOR NUM_PROCESSES PROCESS_ID]
MODE is ``sharded`` or ``plain``; with the last three arguments it joins a jax.distributed run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

if len(sys.argv) > 3:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[3], num_processes=int(sys.argv[4]), process_id=int(sys.argv[5]),
                               initialization_timeout=60)

import numpy as np  # noqa: E402

from jaxsplit.agents.population import gather, population_grid, train_population  # noqa: E402
from jaxsplit.agents.ppo import PPOConfig, make_train  # noqa: E402
from tiny_env import TinyEnv  # noqa: E402


def main() -> None:
    out, mode = sys.argv[1], sys.argv[2]
    env = TinyEnv()
    config = PPOConfig(num_envs=8, num_steps=16, num_minibatches=2, total_timesteps=8 * 16 * 3)
    train = make_train(config, env, env.default_params())
    keys, hparams, rows = population_grid(train.trainer.default_hparams(), 2, lr=[3e-4, 3e-3])
    runner, metrics = train_population(train, keys, hparams, sharded=(mode == "sharded"))
    params, metrics = gather((runner.params, metrics))
    leaves = {f"p{i}": leaf for i, leaf in enumerate(jax.tree.leaves(params))}
    if jax.process_index() == 0:
        np.savez(out, devices=jax.device_count(), **leaves, **{f"m_{k}": v for k, v in metrics.items()})
    print(f"process {jax.process_index()} of {jax.process_count()} done on {jax.device_count()} devices", flush=True)


if __name__ == "__main__":
    main()
