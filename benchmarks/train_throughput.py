"""PPO training throughput (environment steps per second) for one agent and for populations, against
Stable-Baselines3 PPO on the Gymnasium vector adapter, with the final latency of both at equal steps.

What is measured (one process, one machine):

- JAX: ``jax.jit(make_train(config, *spec.make()))`` (``PPOConfig()`` and ``EnvSpec()``, the ``jaxsplit train``
  defaults, with only the run length set here) for one agent and ``train_population`` (agents/population.py:
  one jitted call, agents initialised one at a time inside it, the training updates vmapped; ``--pop-init
  vmap`` vmaps the whole ``train`` instead) for populations of 8 and 64 agents, measured by
  :mod:`jaxsplit.bench` (the code of ``jaxsplit bench train``): the single agent is compiled ahead of time
  (compile time apart) and run once; a population is called twice with different keys, compile = first
  call - second call, and its jitted program must have one cache entry. steps/s = agents x updates x
  num_envs x num_steps / seconds of the compiled run.
- Peer without jaxsplit (``--twin-timesteps``, ``--twin-envs``): Stable-Baselines3 PPO on Gymnasium
  environments that each step the plain numpy twin (envs/twin.py, one request per ``step``, as a numpy
  user writes it) in a ``DummyVecEnv``, the PPO settings below but ``--twin-envs`` environments
  (:func:`jaxsplit.bench.sb3_numpy_peer`). The twin makes about a hundred steps per second, so the peer
  trains a few thousand steps and its steps/s (the whole ``learn()`` call) is the figure; its final
  latency at the JAX agent's step count is not measured (it would take hours), the SB3-on-the-adapter
  row stands for it (same algorithm and settings on the same dynamics: tests/test_env_twin.py checks the
  twin against the JAX environment).
- Peer: Stable-Baselines3 PPO (torch, CPU, ``torch.set_num_threads(--torch-threads)``, default 1) on
  ``GymnasiumAllocationVectorEnv`` (the same JAX environment, one jitted vmapped step for all
  environments per call) behind a small SB3 ``VecEnv`` adapter, with ``VecNormalize`` for the
  observation and reward normalisation. Same n_envs, n_steps, minibatch size, epochs, learning rate
  (linearly annealed), gamma, GAE lambda, clip range (policy and value), entropy and value
  coefficients, gradient clip, Adam eps and MLP widths (separate tanh actor and critic). Truncated
  episodes are bootstrapped by both. The one difference: the action. SB3's policy is its default
  diagonal Gaussian over the N shares (the unwrapped environment, ``spec.base()``), clipped to [0, 1];
  jaxsplit's is the action form of its ``EnvSpec`` (``spec.make()``: by default a categorical over the
  (cap, floor) rules of ``clip_pairs``, decoded into shares by the action wrapper). SB3's steps/s is the whole
  ``learn()`` call divided by its steps; the adapter's jit compilation is done before the clock starts.
- Final latency at equal environment steps: the single JAX agent (second call) and SB3 both train
  ``--timesteps`` steps; both deterministic policies (jaxsplit's most probable action or Beta mean, run on
  the wrapped environment; SB3's Gaussian mean on its normalised observation, clipped, run on the
  unwrapped one) are evaluated by ``jaxsplit.envs.evaluation.evaluate`` (the one evaluation path; its
  records' ``mean_latency_s`` and ``mean_latency_s_ci`` make the latency table) on the very same
  episodes (same keys, loads, clusters, requests). SB3's policy runs as a host callback
  (``jax.pure_callback``, one batched call per step for all episodes).

    python benchmarks/train_throughput.py            # full run, writes RESULTS.md (about 5 minutes)
    python benchmarks/train_throughput.py --quick    # a smoke run of a few updates, no RESULTS.md update

Needs the ``bench`` extra (``pip install -e .[bench]``: stable-baselines3) for the peer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, machine, record  # noqa: E402

from jaxsplit import bench  # noqa: E402
from jaxsplit.agents.ppo import PPOConfig  # noqa: E402
from jaxsplit.envs import EnvSpec  # noqa: E402
from jaxsplit.envs.evaluation import evaluate  # noqa: E402
from jaxsplit.envs.gym_adapter import GymnasiumAllocationVectorEnv  # noqa: E402

EVAL_LOADS = (0.3, 0.6, 0.9, 1.2)


def time_single(config: PPOConfig, spec: EnvSpec, seed: int) -> dict[str, Any]:
    """One agent: :func:`jaxsplit.bench.train_single` (compiled ahead of time, then one timed run), the
    definition ``jaxsplit bench train`` uses."""
    row, (runner, _, trainer) = bench.train_single(config, spec, seed=seed)
    return dict(agents=1, updates=row["updates"], steps=row["steps"], run_s=row["best_s"], compile_s=row["compile_s"],
                rate=row["steps_per_s"], runner=runner, trainer=trainer)


def time_population(config: PPOConfig, spec: EnvSpec, agents: int, init: str = "map") -> dict[str, Any]:
    """``agents`` agents in one ``train_population`` call: :func:`jaxsplit.bench.train_population_row`."""
    row = bench.train_population_row(config, agents, spec, repeats=1, init=init)
    return dict(agents=agents, updates=row["updates"], steps=row["steps"], run_s=row["best_s"],
                compile_s=row["compile_s"], rate=row["steps_per_s"])


# ------------------------------------------------------------------------------------------- peer
def sb3_vec_env(config: PPOConfig, spec: EnvSpec, seed: int):
    """The Gymnasium vector adapter of the unwrapped environment (shares as actions) behind
    Stable-Baselines3's VecEnv API (same-step autoreset)."""
    from stable_baselines3.common.vec_env import VecEnv

    class AllocationVecEnv(VecEnv):
        def __init__(self):
            env, params = spec.base()
            self.inner = GymnasiumAllocationVectorEnv(config.num_envs, env=env, params=params)
            self.render_mode = None
            super().__init__(config.num_envs, self.inner.single_observation_space, self.inner.single_action_space)
            self._next_seed = seed

        def reset(self):
            obs, _ = self.inner.reset(seed=self._next_seed)
            self._next_seed = None
            return obs

        def step_async(self, actions):
            self._actions = actions

        def step_wait(self):
            obs, reward, term, trunc, info = self.inner.step(self._actions)
            done = np.logical_or(term, trunc)
            infos = [{} for _ in range(self.num_envs)]
            for i in np.flatnonzero(done):
                infos[i]["terminal_observation"] = info["final_obs"][i]
                infos[i]["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
            return obs, reward.astype(np.float32), done, infos

        def close(self):
            pass

        def get_attr(self, attr_name, indices=None):
            if attr_name == "render_mode":
                return [None] * len(list(self._get_indices(indices)))
            raise AttributeError(attr_name)

        def set_attr(self, attr_name, value, indices=None):
            raise AttributeError(attr_name)

        def env_method(self, method_name, *args, indices=None, **kwargs):
            raise AttributeError(method_name)

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * len(list(self._get_indices(indices)))

    return AllocationVecEnv()


def _normalized_adapter(config: PPOConfig, spec: EnvSpec, seed: int) -> Any:
    """The Gymnasium vector adapter, compiled before any clock starts, under SB3's VecNormalize."""
    from stable_baselines3.common.vec_env import VecNormalize

    venv = sb3_vec_env(config, spec, seed)
    venv.reset()
    venv.step_async(np.full((config.num_envs, venv.action_space.shape[0]), 0.5, np.float32))
    venv.step_wait()  # compile the adapter's jitted reset and step before the clock starts
    venv._next_seed = seed
    return VecNormalize(venv, norm_obs=config.normalize_obs, norm_reward=config.normalize_reward,
                        clip_obs=10.0, clip_reward=np.inf, gamma=config.gamma)


def _ppo_settings(config: PPOConfig, policy: dict[str, Any]) -> dict[str, Any]:
    """SB3's (and sbx's) PPO keyword arguments for the config's settings; ``policy`` adds policy kwargs."""
    lr = (lambda remaining: config.lr * remaining) if config.anneal_lr else config.lr
    return dict(learning_rate=lr, n_steps=config.num_steps, batch_size=config.batch_size // config.num_minibatches,
                n_epochs=config.update_epochs, gamma=config.gamma, gae_lambda=config.gae_lambda,
                clip_range=config.clip_eps, clip_range_vf=config.clip_eps, ent_coef=config.ent_coef,
                vf_coef=config.vf_coef, max_grad_norm=config.max_grad_norm, normalize_advantage=True,
                policy_kwargs=dict(net_arch=dict(pi=list(config.hidden), vf=list(config.hidden)), **policy))


def train_sb3(config: PPOConfig, spec: EnvSpec, timesteps: int, seed: int, threads: int = 1) -> dict[str, Any]:
    """SB3 PPO with the config's hyperparameters: steps/s of ``learn`` and the trained policy."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(threads)
    venv = _normalized_adapter(config, spec, seed)
    model = PPO("MlpPolicy", venv, **_ppo_settings(config, dict(activation_fn=torch.nn.Tanh)),
                device="cpu", seed=seed, verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - t0
    steps = int(model.num_timesteps)
    return dict(steps=steps, run_s=wall, rate=steps / wall, model=model, vecnorm=venv,
                threads=torch.get_num_threads(), version=__import__("stable_baselines3").__version__,
                torch=torch.__version__)


def train_sbx(config: PPOConfig, spec: EnvSpec, timesteps: int, seed: int) -> dict[str, Any] | None:
    """sbx (Stable-Baselines3's JAX port) PPO on the adapter, the settings of :func:`train_sb3`; steps/s of
    ``learn``. None when sbx is not installed (``pip install sbx-rl``)."""
    try:
        import sbx
        from sbx import PPO
    except ImportError:
        return None
    venv = _normalized_adapter(config, spec, seed)
    model = PPO("MlpPolicy", venv, **_ppo_settings(config, {}), seed=seed, verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - t0
    steps = int(model.num_timesteps)
    return dict(steps=steps, run_s=wall, rate=steps / wall, version=getattr(sbx, "__version__", "?"))


def sb3_policy_fn(model: Any, vecnorm: Any, num_devices: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """SB3's deterministic policy as ``fn(key, obs (..., obs_dim)) -> shares (..., N)`` (host callback)."""

    def host(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        flat = obs.reshape(-1, obs.shape[-1])
        action, _ = model.predict(vecnorm.normalize_obs(flat), deterministic=True)
        action = np.clip(np.asarray(action, np.float32), 0.0, 1.0)
        return action.reshape(obs.shape[:-1] + (num_devices,))

    def policy_fn(key: jax.Array, obs: jax.Array) -> jax.Array:
        out = jax.ShapeDtypeStruct(obs.shape[:-1] + (num_devices,), jnp.float32)
        return jax.pure_callback(host, out, obs, vmap_method="expand_dims")

    return policy_fn


# ------------------------------------------------------------------------------------------- main
def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _parts_args(args: argparse.Namespace) -> list[str]:
    return ["--timesteps", str(args.timesteps), "--pop-updates", str(args.pop_updates), "--eval-episodes",
            str(args.eval_episodes), "--seed", str(args.seed), "--pop-init", args.pop_init]


def run_part(args: argparse.Namespace, part: str, timeout_s: float, attempts: int = 2) -> dict[str, Any] | None:
    """Run one JAX measurement in a fresh process (retried once if it stalls); its JSON result.

    Each training program gets a process of its own, so that a stalled program (``--pop-init vmap`` on a
    CPU with few cores: batched LAPACK calls of the initialisation deadlock XLA's intra-op pool, see
    agents/population.py) costs a timeout, not the run.
    """
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--part", part, *_parts_args(args)]
    for attempt in range(1, attempts + 1):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"{part}: no result after {timeout_s:.0f} s (attempt {attempt})", flush=True)
            continue
        if out.returncode != 0:
            raise SystemExit(f"{part} failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["attempts"] = attempt
        return result
    return None


def part_main(args: argparse.Namespace, spec: EnvSpec, config: PPOConfig, pop_config: PPOConfig) -> None:
    """One measurement in this process; prints a JSON line."""
    if os.environ.get("TRAIN_THROUGHPUT_SYNC", "1") == "1":
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    if args.part == "single":
        r = time_single(config, spec, args.seed)
        env, params = spec.make()  # the trained policy's action goes through the action wrapper
        rows = evaluate(r["trainer"].policy(r["runner"]), env, params, EVAL_LOADS,
                        episodes=args.eval_episodes, seed=args.seed + 7, name="ppo (jaxsplit)")
        r = {k: v for k, v in r.items() if k not in ("runner", "trainer")}
        r["eval"] = rows
    else:
        r = time_population(pop_config, spec, int(args.part.split(":")[1]), args.pop_init)
    print(json.dumps(r), flush=True)


def _parser() -> argparse.ArgumentParser:
    """The command-line options (also those of the ``--part`` subprocesses)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few updates each; prints, does not record")
    parser.add_argument("--timesteps", type=int, default=None,
                        help="steps of the single JAX agent and of SB3 (default 128 updates of the train "
                             "defaults' batch; quick 2)")
    parser.add_argument("--pop-updates", type=int, default=None,
                        help="updates per agent in the timed population calls (default 3; quick 1)")
    parser.add_argument("--agents", default=None, help="population sizes (default 8,64; quick 8)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per load (default 16; quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pop-init", choices=("map", "vmap"), default="map",
                        help="train_population's init: agents initialised one at a time (map, default) or the "
                             "whole train vmapped (vmap; can deadlock on a CPU with few cores)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads of the peer (1: its fastest for these 64-wide MLPs here)")
    parser.add_argument("--no-sb3", action="store_true", help="skip the peers")
    parser.add_argument("--twin-timesteps", type=int, default=None,
                        help="steps of SB3 on the numpy twin and of the jaxsplit agent it is compared with "
                             "(default 4 updates of --twin-envs x num_steps; quick 1; 0 skips it)")
    parser.add_argument("--sbx-timesteps", type=int, default=None,
                        help="steps of sbx (SB3's JAX port) PPO on the adapter, if installed (default 8 updates; "
                             "quick 1; 0 skips it)")
    parser.add_argument("--twin-envs", type=int, default=16, help="environments of the numpy-twin peer")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    return parser


def _resolve(args: argparse.Namespace) -> tuple[list[int], EnvSpec, PPOConfig, PPOConfig, PPOConfig]:
    """Fill in the run lengths left unset in ``args`` (quick or full defaults); (population sizes, the
    environment spec, the train defaults, the single agent's config, the populations' config)."""
    quick = args.quick
    args.pop_updates = args.pop_updates or (1 if quick else 3)
    agents_list = [int(a) for a in (args.agents or ("8" if quick else "8,64")).split(",") if a.strip() and int(a) > 0]
    args.eval_episodes = args.eval_episodes or (2 if quick else 16)

    spec, base = EnvSpec(), PPOConfig()  # the train command's defaults; only the run length is set here
    args.timesteps = args.timesteps or ((2 if quick else 128) * base.batch_size)
    if args.sbx_timesteps is None:
        args.sbx_timesteps = (1 if quick else 8) * base.batch_size
    if args.twin_timesteps is None:
        args.twin_timesteps = (1 if quick else 4) * args.twin_envs * base.num_steps
    config = dataclasses.replace(base, total_timesteps=args.timesteps)
    config.validate()
    pop_config = dataclasses.replace(base, total_timesteps=args.pop_updates * base.batch_size)
    return agents_list, spec, base, config, pop_config


def _require_peer(args: argparse.Namespace) -> None:
    """Exit with the install hint when the peers are asked for and stable-baselines3 or torch is missing."""
    if args.no_sb3:
        return
    try:
        import stable_baselines3  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        sys.exit(f"the peer needs stable-baselines3 and torch ({err.name} is missing): "
                 f"pip install -e '.[bench]' (or pass --no-sb3)")


def _time_jax(args: argparse.Namespace, agents_list: list[int],
              base: PPOConfig) -> tuple[list[dict[str, Any]], dict[str, Any], list[int]]:
    """The single agent, then every population size, each in a process of its own; (rows, the single
    agent's row, the population sizes whose run stalled)."""
    rows = []
    single = run_part(args, "single", timeout_s=180 + args.timesteps / 2000)
    if single is None:
        raise SystemExit("the single-agent run stalled twice")
    rows.append(single)
    stalled = []
    print(f"jax 1 agent: {single['updates']} updates, compile {single['compile_s']:.1f} s, "
          f"{_fmt_rate(single['rate'])} steps/s", flush=True)
    for agents in agents_list:
        r = run_part(args, f"pop:{agents}", timeout_s=150 + agents * args.pop_updates * base.batch_size / 4000,
                     attempts=1)
        if r is None:
            stalled.append(agents)
            continue
        rows.append(r)
        print(f"jax {agents} agents: {r['updates']} updates each, compile {r['compile_s']:.1f} s, "
              f"{_fmt_rate(r['rate'])} steps/s", flush=True)
    return rows, single, stalled


def _train_peers(args: argparse.Namespace, config: PPOConfig,
                 spec: EnvSpec) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """SB3 on the adapter, sbx on the adapter and SB3 on the numpy twin, those asked for; None for the others."""
    peer = None
    if not args.no_sb3:
        peer = train_sb3(config, spec, args.timesteps, args.seed, args.torch_threads)
        print(f"sb3: {peer['steps']} steps in {peer['run_s']:.1f} s, {_fmt_rate(peer['rate'])} steps/s", flush=True)
    sbx_peer = None
    if not args.no_sb3 and args.sbx_timesteps > 0:
        sbx_peer = train_sbx(config, spec, args.sbx_timesteps, args.seed)
        if sbx_peer is not None:
            print(f"sbx: {sbx_peer['steps']} steps in {sbx_peer['run_s']:.1f} s, {_fmt_rate(sbx_peer['rate'])} "
                  "steps/s", flush=True)
    twin_peer = None
    if not args.no_sb3 and args.twin_timesteps > 0:
        twin_peer = bench.sb3_numpy_peer(config, args.twin_timesteps, spec, args.seed, args.torch_threads,
                                         num_envs=args.twin_envs)
        print(f"sb3 on the numpy twin: {twin_peer['steps']} steps in {twin_peer['run_s']:.1f} s, "
              f"{_fmt_rate(twin_peer['steps_per_s'])} steps/s", flush=True)
    return peer, sbx_peer, twin_peer


def _final_latency(args: argparse.Namespace, spec: EnvSpec, single: dict[str, Any],
                   peer: dict[str, Any] | None) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    """Final latency of the trained policies and best_constant at equal environment steps, on the same
    episodes; (the unwrapped environment, policy name -> evaluation records per load)."""
    env, params = spec.base()  # SB3 and the baseline give the shares themselves
    evals = {"ppo (jaxsplit)": single["eval"]}
    if peer is not None:
        fn = sb3_policy_fn(peer["model"], peer["vecnorm"], env.num_devices)
        evals["ppo (SB3)"] = evaluate(fn, env, params, EVAL_LOADS, episodes=args.eval_episodes,
                                      seed=args.seed + 7, name="ppo (SB3)")

    evals["best_constant"] = evaluate("best_constant", env, params, EVAL_LOADS, episodes=args.eval_episodes,
                                      seed=args.seed + 7)
    for name, res in evals.items():
        print(name, " ".join(f"{r['load']:g}:{r['mean_latency_s']:.4f}" for r in res), flush=True)
    return env, evals


def _header(args: argparse.Namespace, spec: EnvSpec, config: PPOConfig, loads: tuple[tuple[float, ...], ...],
            rows: list[dict[str, Any]]) -> list[str]:
    """The section's heading, command, machine, load averages (start, end), settings and throughput
    table head."""
    load0, load1 = loads
    return ["## PPO training throughput (`benchmarks/train_throughput.py`)", "",
            f"Command: `{command()}`  ",
            f"Machine: {machine()}  ",
            f"Load average (1 min) at start / end: {load0[0]:.2f} / {load1[0]:.2f} (shared machine)  ",
            f"Revision: {git_revision()}", "",
            f"PPO settings (the `jaxsplit train` defaults): {spec.env}, num_envs {config.num_envs}, "
            f"num_steps {config.num_steps}, {config.update_epochs} epochs x {config.num_minibatches} minibatches "
            f"({config.batch_size // config.num_minibatches} transitions), MLP {list(config.hidden)} tanh, "
            f"lr {config.lr:g} (annealed: {config.anneal_lr}), gamma {config.gamma}, GAE lambda {config.gae_lambda}, "
            f"clip {config.clip_eps}, ent {config.ent_coef}, vf {config.vf_coef}, grad clip {config.max_grad_norm}, "
            f"obs/reward normalisation {config.normalize_obs}/{config.normalize_reward}, environment "
            f"{spec.overrides() or 'defaults'}; jaxsplit only: action {spec.action!r}, "
            f"{spec.distribution} policy over "
            + (f"the (cap, floor) pairs of the levels {', '.join(f'{v:.3g}' for v in spec.pair_levels)}, "
               if spec.action == "clip_pairs" and spec.pair_levels else
               f"the share levels {spec.share_levels} (0, 1/K, ..., 1/2, 1), ")
            + f"{config.reward_groups} reward groups (SB3 keeps its Gaussian over the N shares, clipped to [0, 1], and "
            "one reward scale).", "",
            "Steps/s counts environment steps of all agents in the second (compiled) call; compile = first "
            "call minus second call. Populations: one `train_population` call (agents initialised one at a time "
            f"inside it, training vmapped; init={args.pop_init}). Each JAX row runs in a fresh process "
            f"(stalled processes retried: {sum(r['attempts'] - 1 for r in rows)}); SB3 and the evaluation run in the "
            "main process.", "",
            "| trainer | agents | updates per agent | env steps | compile (s) | run (s) | env steps/s | vs SB3 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]


def _throughput_rows(args: argparse.Namespace, config: PPOConfig, rows: list[dict[str, Any]], stalled: list[int],
                     peer: dict[str, Any] | None, sbx_peer: dict[str, Any] | None) -> list[str]:
    """The throughput table's rows: the JAX runs, the stalled ones, SB3 and sbx."""
    body = []
    for r in rows:
        ratio = f"{r['rate'] / peer['rate']:.1f}x" if peer else "-"
        trainer = "jit(train)" if r["agents"] == 1 else f"train_population (init={args.pop_init})"
        body.append(f"| jaxsplit PPO, {trainer} "
                    f"| {r['agents']} | {r['updates']} | {r['steps']:,} | {r['compile_s']:.1f} | {r['run_s']:.1f} | "
                    f"{_fmt_rate(r['rate'])} | {ratio} |")
    for agents in stalled:
        body.append(f"| jaxsplit PPO, train_population (init={args.pop_init}) | {agents} | {args.pop_updates} | - | "
                    f"- | - | stalled (see "
                    f"below) | - |")
    if peer:
        body.append(f"| SB3 {peer['version']} PPO (torch {peer['torch']}, {peer['threads']} threads) on the "
                    f"Gymnasium vector adapter | 1 | {peer['steps'] // config.batch_size} | {peer['steps']:,} | - | "
                    f"{peer['run_s']:.1f} | {_fmt_rate(peer['rate'])} | 1x |")
    if sbx_peer is not None:
        body.append(f"| sbx {sbx_peer['version']} PPO (JAX) on the Gymnasium vector adapter | 1 | "
                    f"{sbx_peer['steps'] // config.batch_size} | {sbx_peer['steps']:,} | - | {sbx_peer['run_s']:.1f} | "
                    f"{_fmt_rate(sbx_peer['rate'])} | {sbx_peer['rate'] / peer['rate']:.1f}x |")
    return body


def _latency_lines(args: argparse.Namespace, env: Any, evals: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The final-latency table: mean latency (s) +- 95% CI per load and the mean over loads."""
    body = ["", f"Final mean latency (s) after {args.timesteps:,} environment steps (one training seed each), "
            f"deterministic policies evaluated by `jaxsplit.envs.evaluate` on the same {args.eval_episodes} "
            f"episodes per load (randomised clusters, {env.requests} requests, first 10% left out), "
            "+- 95% CI over episodes; best_constant (the strongest baseline, share searched per load) for "
            "reference:", "",
            "| policy | " + " | ".join(f"load {l:g}" for l in EVAL_LOADS) + " | mean over loads |",
            "|---|" + "---:|" * (len(EVAL_LOADS) + 1)]
    for name, res in evals.items():
        cells = [f"{r['mean_latency_s']:.4f} +- {r['mean_latency_s_ci']:.4f}" for r in res]
        body.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean([r['mean_latency_s'] for r in res]):.4f} |")
    return body


def _peer_lines(config: PPOConfig, rows: list[dict[str, Any]], single: dict[str, Any],
                evals: dict[str, list[dict[str, Any]]], peer: dict[str, Any] | None,
                sbx_peer: dict[str, Any] | None, twin_peer: dict[str, Any] | None) -> list[str]:
    """The ratios to SB3 and sbx measured in this run, and the table against SB3 on the numpy twin."""
    body: list[str] = []
    if peer:
        best_pop = max((r for r in rows if r["agents"] > 1), key=lambda r: r["rate"], default=single)
        jl = np.mean([r["mean_latency_s"] for r in evals["ppo (jaxsplit)"]])
        sl = np.mean([r["mean_latency_s"] for r in evals["ppo (SB3)"]])
        body += ["", f"Ratio measured in this run: one jaxsplit agent runs {single['rate'] / peer['rate']:.1f}x "
                 f"SB3's steps/s, a population of {best_pop['agents']} {best_pop['rate'] / peer['rate']:.1f}x "
                 f"(aggregate); final mean latency over the loads {jl:.4f} s (jaxsplit) vs {sl:.4f} s (SB3)."]
    if sbx_peer is not None:
        body += ["", f"sbx trains {sbx_peer['steps']:,} steps (its rate is the whole `learn()` call, its own jit "
                 "compilation included; no latency figure). Ratio measured in this run: one jaxsplit agent runs "
                 f"{single['rate'] / sbx_peer['rate']:.1f}x sbx's steps/s."]
    if twin_peer is not None:
        best_pop = max((r for r in rows if r["agents"] > 1), key=lambda r: r["rate"], default=single)
        tp = twin_peer
        body += ["", "### Against the peer a user without jaxsplit has: SB3 on the numpy twin", "",
                 f"Stable-Baselines3 {tp['sb3']} PPO (torch {tp['torch']}, {tp['threads']} threads) on "
                 f"{tp['envs']} Gymnasium environments stepping the numpy twin (`DummyVecEnv`), the PPO settings above "
                 f"(minibatches of {tp['envs'] * config.num_steps // config.num_minibatches}), trained "
                 f"{tp['steps']:,} steps (far fewer than the JAX agent: it is slow; its rate is the whole `learn()` "
                 "call, and it is what a longer run would keep). Ratios measured in this run:", "",
                 "| trainer | env steps | run (s) | env steps/s | jaxsplit / this |", "|---|---:|---:|---:|---:|",
                 f"| SB3 PPO on the numpy twin | {tp['steps']:,} | {tp['run_s']:.1f} | {_fmt_rate(tp['steps_per_s'])} "
                 f"| one agent {single['rate'] / tp['steps_per_s']:,.0f}x, population of {best_pop['agents']} "
                 f"{best_pop['rate'] / tp['steps_per_s']:,.0f}x |"]
        body += ["", "Its final latency at the JAX agent's step count would take hours to reach at this rate; the "
                 "SB3-on-the-adapter rows above (same algorithm, settings and dynamics) stand for it."]
    return body


def main() -> None:
    args = _parser().parse_args()
    agents_list, spec, base, config, pop_config = _resolve(args)
    if args.part:
        part_main(args, spec, config, pop_config)
        return
    _require_peer(args)

    load0 = os.getloadavg()
    print(f"machine: {machine()}; load average {load0[0]:.2f}", flush=True)
    rows, single, stalled = _time_jax(args, agents_list, base)
    peer, sbx_peer, twin_peer = _train_peers(args, config, spec)
    # final latency of both at equal environment steps, on the same episodes
    env, evals = _final_latency(args, spec, single, peer)
    load1 = os.getloadavg()

    body = _header(args, spec, config, (load0, load1), rows)
    body += _throughput_rows(args, config, rows, stalled, peer, sbx_peer)
    body += _latency_lines(args, env, evals)
    body += _peer_lines(config, rows, single, evals, peer, sbx_peer, twin_peer)
    if stalled:
        body += ["", f"Stalled: the population run(s) of {stalled} agents never finished in their process (every "
                 "XLA worker thread waiting; with init=vmap, the batched LAPACK QR of the network initialisation "
                 "deadlocks XLA's intra-op pool on a CPU with few cores, see agents/population.py); no figure."]
    text = "\n".join(body)
    print(text)
    if args.quick or args.no_record:
        return
    record("train_throughput", text)


if __name__ == "__main__":
    main()
