"""The one evaluation path: roll out any allocation policy for metrics (MODEL.md section 6).

Every latency figure of jaxsplit comes from here: ``jaxsplit evaluate``, the report of ``jaxsplit
train``, and the benchmarks. :func:`evaluate` runs a policy on loads x seeds x episodes independent
episodes in one jitted, vmapped call; episode (seed s, episode e) uses the key
fold_in(fold_in(key(seed), s), e), so every policy evaluated with the same arguments sees the same
episodes (the same clusters, arrivals and models). The first ``warmup`` fraction of each episode's
requests is left out of the metrics (the queue starts empty).

The episodes themselves are one declaration, :class:`Protocol` (loads, episodes per load, requests per
episode, warm-up, seed): its defaults are those of ``jaxsplit train``'s report, ``jaxsplit sweep``'s
objective, ``jaxsplit evaluate`` and :func:`evaluate` alike, and every report prints the protocol it
used (:meth:`Protocol.describe`).

One record per policy and load, with the same field names everywhere (``evaluate --json``, a run's
evaluation.json, the benchmarks' JSON): ``policy``, ``load``, ``episodes``, ``requests``, ``warmup``,
``seed`` and every metric of :data:`METRICS` (and ``mean_reward``), each the mean over episodes, with
``<metric>_ci``, the 95% confidence half-width 1.96 sd / sqrt(n) over the n episodes.

>>> from jaxsplit import envs
>>> env, params = envs.make("alloc-v0")
>>> rows = envs.evaluate("whole_cluster", env, params, loads=[0.3, 0.9], seeds=2, episodes=2, requests=64)
>>> rows[0]["policy"], rows[0]["load"], rows[0]["episodes"]
('whole_cluster', 0.3, 4)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxsplit import contract

from . import policies as policies_mod
from .actions import ShareAction, clip_free, clip_pairs
from .alloc import AllocationEnv, EnvParams

PolicyLike = Union[str, policies_mod.Policy, Callable[[jax.Array, jax.Array], jax.Array]]

#: Metrics per policy and load (each also with a ``_ci`` 95% half-width over episodes).
METRICS = ("mean_latency_s", "p95_latency_s", "p99_latency_s", "normalized_latency", "utilization",
           "request_utilization", "throughput_rps", "invalid_rate")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The evaluation protocol: the episodes on which a policy's figures are measured (defaults: the main
    job's report, and every other evaluation's).

    Each load gets ``episodes`` independent episodes of ``requests`` requests; episode e of seed group s
    uses the key fold_in(fold_in(key(seed), s), e), so every policy evaluated with one protocol sees the
    same clusters, arrivals and models. The defaults are those the main job's report has always used
    (four loads from light to saturated, 16 episodes of 256 requests, seed 0).
    """

    loads: tuple[float, ...] = (0.3, 0.6, 0.9, 1.2)
    """offered loads rho, one record per policy and load (1 saturates the whole-cluster policy)"""
    episodes: int = 16
    """independent episodes per load and policy"""
    requests: int = 256
    """requests per episode"""
    warmup: float = 0.1
    """fraction of each episode's first requests left out of the metrics (the queue starts empty)"""
    seed: int = 0
    """seed of the episodes (the same for every policy)"""

    def check(self) -> "Protocol":
        """The protocol itself; ValueError naming the first bad field."""
        contract.check_loads(self.loads)  # each in [1e-6, 1e6] (docs/MODEL.md, section 8)
        for name, low in (("episodes", 1), ("requests", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"field {name!r}: must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.warmup, (int, float)) and 0 <= self.warmup < 1):
            raise ValueError(f"field 'warmup': must be in [0, 1), got {self.warmup!r}")
        contract.check_seed(self.seed)
        return self

    def describe(self) -> str:
        """One line for a report, e.g. "loads 0.3, 0.6, 0.9, 1.2; 16 episodes x 256 requests per load
        (first 10% left out), seed 0"."""
        return (f"loads {', '.join(f'{x:g}' for x in self.loads)}; {self.episodes} episodes x {self.requests} "
                f"requests per load (first {self.warmup:.0%} left out), seed {self.seed}")

    def to_json(self) -> dict[str, Any]:
        return {"loads": [float(x) for x in self.loads], "episodes": self.episodes, "requests": self.requests,
                "warmup": float(self.warmup), "seed": self.seed}


def protocol_of(protocol: Protocol | None = None, **given: Any) -> Protocol:
    """``protocol`` (default: :class:`Protocol`'s defaults) with every value of ``given`` that is not None;
    ``loads`` becomes a tuple of floats."""
    out = Protocol() if protocol is None else protocol
    values = {k: v for k, v in given.items() if v is not None}
    if "loads" in values:
        values["loads"] = contract.check_loads(values["loads"])
    return dataclasses.replace(out, **values) if values else out


def as_policy(policy: PolicyLike, env: AllocationEnv, **options: Any) -> policies_mod.Policy:
    """A registered name, a bound :class:`Policy`, or an observation-only ``fn(key, obs) -> action``."""
    if isinstance(policy, str):
        return policies_mod.get(policy, env, **options)
    if isinstance(policy, policies_mod.Policy):
        return policy
    if callable(policy):
        return policies_mod.from_observation(policy, getattr(policy, "__name__", "policy"))
    raise ValueError(f"field 'policy': expected a name or a callable, got {policy!r}")


@functools.lru_cache(maxsize=32)
def with_requests(env: AllocationEnv | ShareAction, requests: int | None) -> AllocationEnv | ShareAction:
    """The same environment (action wrapper included) with another episode length (a static
    setting); cached."""
    if requests is None or requests == env.requests:
        return env
    if isinstance(env, ShareAction):
        return env.with_env(with_requests(env.env, requests))
    return AllocationEnv(env.num_devices, env.slots, env.models, env.input_size, int(requests), env.split,
                         env.bytes_per_element, env.reward_scale, env.observation_kind, env.planner)


_RECORDED = ("latency", "exec_time", "wait", "utilization", "invalid", "flop", "arrival", "e_ref", "capacity")


def _episode(env: AllocationEnv, act: Callable, key: jax.Array, params: EnvParams, aux: Any) -> dict[str, jax.Array]:
    """One whole episode (reset, then ``env.requests`` steps); per-request records of shape (R,).
    ``act(key, obs, state, params, aux) -> action``."""
    k_reset, k_run = jax.random.split(key)
    obs, state = env.reset(k_reset, params)

    def body(carry, k):
        obs, state = carry
        k_act, k_step = jax.random.split(k)
        action = act(k_act, obs, state, params, aux)
        obs2, state2, reward, _, _, info = env.step(k_step, state, action, params)
        rec = {name: info[name] for name in _RECORDED}
        rec["reward"] = reward
        return (obs2, state2), rec

    _, recs = jax.lax.scan(body, (obs, state), jax.random.split(k_run, env.requests))
    return recs


@functools.lru_cache(maxsize=64)
def _runner(env: AllocationEnv, act: Callable, batched_aux: bool):
    """jit of vmap over (aux,) loads, episodes of one episode; cached per (env, act)."""
    fn = functools.partial(_episode, env, act)
    fn = jax.vmap(fn, in_axes=(0, None, None))  # episodes
    fn = jax.vmap(fn, in_axes=(0, 0, None))  # loads
    if batched_aux:
        fn = jax.vmap(fn, in_axes=(None, None, 0))  # aux (e.g. a grid of constant shares)
    return jax.jit(fn)


def run_episodes(env: AllocationEnv, params: EnvParams, act: Callable, loads: Sequence[float], episodes: int,
                 seed: int, seeds: int = 1, aux: Any = None, aux_batched: bool = True) -> dict[str, np.ndarray]:
    """Records (([G,] loads, seeds * episodes, R)) of ``act(key, obs, state, params, aux)`` run on
    every load and episode; with ``aux`` given and ``aux_batched``, also vmapped over its leading
    axis G (else ``aux`` is passed whole to every episode, traced)."""
    loads_a = jnp.asarray(loads, env.dtype)
    many = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(loads),) + a.shape), params)
    many = many.replace(load_min=loads_a, load_max=loads_a)
    base = jax.random.key(seed)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(base, s), e) for s in range(seeds)
                      for e in range(episodes)])
    keys = jnp.broadcast_to(keys, (len(loads),) + keys.shape)
    recs = _runner(env, act, aux is not None and aux_batched)(keys, many, aux)
    return jax.tree.map(np.asarray, recs)


def _policy_act(policy: policies_mod.Policy) -> Callable:
    return _ACTS.setdefault(policy, lambda key, obs, state, params, aux: policy(key, obs, state, params))


_ACTS: dict = {}


def episode_metrics(recs: dict[str, np.ndarray], warmup: int) -> dict[str, np.ndarray]:
    """Per-episode metrics from per-request records of shape (..., R); requests before ``warmup``
    are dropped (the queue starts empty). Returns arrays of shape (...)."""
    sl = lambda a: np.asarray(a, np.float64)[..., warmup:]
    lat, e_ref, flop = sl(recs["latency"]), sl(recs["e_ref"]), sl(recs["flop"])
    arrival = sl(recs["arrival"])
    capacity = sl(recs["capacity"])[..., 0]
    span = np.max(arrival + lat, axis=-1) - arrival[..., 0]
    count = lat.shape[-1]
    return {
        "mean_latency_s": lat.mean(-1),
        "p95_latency_s": np.percentile(lat, 95, axis=-1),
        "p99_latency_s": np.percentile(lat, 99, axis=-1),
        "normalized_latency": (lat / e_ref).mean(-1),
        "utilization": flop.sum(-1) / (capacity * span),
        "request_utilization": sl(recs["utilization"]).mean(-1),
        "throughput_rps": count / span,
        "invalid_rate": sl(recs["invalid"]).mean(-1),
        "mean_reward": sl(recs["reward"]).mean(-1),
    }


def _check_evaluation(loads: Sequence[float], seeds: int, episodes: int, warmup: float) -> None:
    contract.check_loads(loads)
    if seeds < 1 or episodes < 1:
        raise ValueError(f"field 'episodes': seeds and episodes must be positive, got {seeds}, {episodes}")
    if not 0 <= warmup < 1:
        raise ValueError(f"field 'warmup': must be in [0, 1), got {warmup!r}")


def _bind(policy: PolicyLike, env: AllocationEnv, params: EnvParams, loads: Sequence[float], seed: int,
          warmup: float, policy_options: dict[str, Any]) -> tuple[AllocationEnv, policies_mod.Policy]:
    """The environment ``policy`` runs on and the policy bound to it (a named baseline's tables searched
    first; a stable object per name and options, so that compiled runners are reused)."""
    if isinstance(env, ShareAction) and (isinstance(policy, (str, policies_mod.Policy))):
        env = env.unwrapped  # a baseline gives the shares themselves
    if policy == "best_constant" and "shares" not in policy_options:
        table = search_best_constant(env, params, loads, requests=env.requests, seed=search_seed(seed))
        policy_options = dict(policy_options, loads=tuple(float(l) for l in loads),
                              shares=tuple(float(c) for c in table))
    if policy == "best_clip" and "caps" not in policy_options:
        table, _ = search_best_clip(env, params, loads, requests=env.requests, seed=search_seed(seed), warmup=warmup)
        policy_options = dict(policy_options, loads=tuple(float(l) for l in loads),
                              caps=tuple(float(c) for c in table[:, 0]), floors=tuple(float(f) for f in table[:, 1]))
    pol = as_policy(policy, env, **policy_options)
    if isinstance(policy, str):
        pol = _named_policy(env, policy, tuple(sorted((k, _hashable(v)) for k, v in policy_options.items())))
    return env, pol


def _records(label: str, recs: dict[str, np.ndarray], loads: Sequence[float], n: int, requests: int,
             warmup: float, seed: int) -> list[dict[str, Any]]:
    """One record per load from per-request records ((loads, n, R))."""
    per_episode = episode_metrics(recs, int(warmup * requests))
    rows = []
    for i, rho in enumerate(loads):
        row: dict[str, Any] = {"policy": label, "load": float(rho), "episodes": n, "requests": requests,
                               "warmup": float(warmup), "seed": int(seed)}
        for metric, values in per_episode.items():
            v = values[i]
            row[metric] = float(np.mean(v))
            row[metric + "_ci"] = float(1.96 * np.std(v, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        rows.append(row)
    return rows


def evaluate(policy: PolicyLike, env: AllocationEnv, params: EnvParams, loads: Sequence[float] | None = None,
             seeds: int = 1, episodes: int | None = None, requests: int | None = None, seed: int | None = None,
             warmup: float | None = None, name: str | None = None, protocol: Protocol | None = None,
             **policy_options: Any) -> list[dict[str, Any]]:
    """Run ``policy`` on ``len(loads) x seeds x episodes`` independent episodes in one jitted call.

    Args:
      policy: a registered baseline name (``best_constant`` first searches its share per load with
        :func:`search_best_constant`, ``best_clip`` its (cap, floor) with :func:`search_best_clip`,
        both on their own episodes unless the table is given in ``policy_options``), a
        :class:`~jaxsplit.envs.policies.Policy`, or any ``fn(key, obs) -> action`` closure (a trained
        policy: its action is the environment's, decoded by the action wrapper when ``env`` has one).
      env, params: the environment, with or without an action wrapper (a baseline runs on the
        unwrapped one: it gives shares); ``params.load_min/max`` are replaced by each load in turn.
      loads, episodes, requests, seed, warmup: the protocol's values, each given here replacing the
        one of ``protocol`` (default: :class:`Protocol`'s defaults, those of every report): offered
        loads rho, episodes per load, requests per episode, seed of the episodes and the fraction of
        each episode's first requests left out of the metrics.
      seeds: seed groups; independent episodes = seeds * episodes per load (seed group s, episode e
        uses key fold_in(fold_in(key(seed), s), e)).
      name: label of the policy in the rows.
      protocol: the evaluation protocol (:class:`Protocol`).
      policy_options: options of a named baseline (c, k, ...).
    Returns:
      One record per load (see the module docstring). Latencies are in seconds, throughput in
      requests per second.
    """
    p = protocol_of(protocol, loads=loads, episodes=episodes, requests=requests, seed=seed, warmup=warmup)
    loads, episodes, seed, warmup = p.loads, p.episodes, p.seed, p.warmup
    _check_evaluation(loads, seeds, episodes, warmup)
    env = with_requests(env, p.requests)
    label = name or (policy if isinstance(policy, str) else getattr(policy, "name", "policy"))
    env, pol = _bind(policy, env, params, loads, seed, warmup, policy_options)
    recs = run_episodes(env, params, _policy_act(pol), loads, episodes, seed, seeds=seeds)
    return _records(label, recs, loads, seeds * episodes, env.requests, warmup, seed)


def evaluate_baselines(names: Sequence[str], env: AllocationEnv, params: EnvParams,
                       loads: Sequence[float] | None = None, seeds: int = 1, episodes: int | None = None,
                       requests: int | None = None, seed: int | None = None, warmup: float | None = None,
                       options: dict[str, dict[str, Any]] | None = None,
                       protocol: Protocol | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate` of several named baselines, the records in the order of ``names``, from one
    compiled program.

    The episode scan is compiled once with every policy a branch of a ``lax.switch`` whose index is a
    traced, unbatched scalar, so each call runs its own policy's branch only; the records are those
    :func:`evaluate` gives for each name alone (the same episodes). ``options``: name -> that
    baseline's options (c, k, ...). ``best_constant`` and ``best_clip`` search their tables first, as
    in :func:`evaluate`; the protocol is :func:`evaluate`'s.
    """
    p = protocol_of(protocol, loads=loads, episodes=episodes, requests=requests, seed=seed, warmup=warmup)
    loads, episodes, requests, seed, warmup = p.loads, p.episodes, p.requests, p.seed, p.warmup
    _check_evaluation(loads, seeds, episodes, warmup)
    options = options or {}
    for name in names:
        if not isinstance(name, str) or name not in policies_mod.POLICIES:
            raise ValueError(f"field 'policy': unknown policy {name!r}; known: {', '.join(policies_mod.POLICIES)}")
    env = with_requests(env, requests)
    bound = [_bind(name, env, params, loads, seed, warmup, dict(options.get(name, {}))) for name in names]
    base = bound[0][0] if bound else env
    acts = tuple(dict.fromkeys(_policy_act(pol) for _, pol in bound))
    rows: list[dict[str, Any]] = []
    for name, (_, pol) in zip(names, bound):
        index = jnp.int32(acts.index(_policy_act(pol)))
        recs = run_episodes(base, params, _switch_act(acts), loads, episodes, seed, seeds=seeds, aux=index,
                            aux_batched=False)
        rows += _records(name, recs, loads, seeds * episodes, base.requests, warmup, seed)
    return rows


@functools.lru_cache(maxsize=16)
def _switch_act(acts: tuple[Callable, ...]) -> Callable:
    """``act(key, obs, state, params, index)``: the ``index``-th of ``acts`` (a conditional, not a
    select, as long as ``index`` is not batched); one object per tuple, so its runner is cached."""
    return lambda key, obs, state, params, index: jax.lax.switch(
        index, [functools.partial(a, aux=None) for a in acts], key, obs, state, params)


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, np.ndarray)) else v


@functools.lru_cache(maxsize=64)
def _named_policy(env: AllocationEnv, name: str, options: tuple) -> policies_mod.Policy:
    return policies_mod.get(name, env, **dict(options))


#: seed of the episodes on which best_constant and best_clip search their tables
SEARCH_SEED = 12345


def search_seed(eval_seed: int) -> int:
    """The seed of the search episodes for an evaluation with seed ``eval_seed``: :data:`SEARCH_SEED`,
    or the next one when the evaluation itself uses it (the table is never picked on the episodes it
    is then measured on)."""
    return SEARCH_SEED if int(eval_seed) != SEARCH_SEED else SEARCH_SEED + 1


def search_best_constant(env: AllocationEnv, params: EnvParams, loads: Sequence[float],
                         grid: Sequence[float] = tuple(np.round(np.arange(0.1, 1.01, 0.1), 2)),
                         episodes: int = 16, seed: int = SEARCH_SEED, requests: int | None = None,
                         warmup: float = 0.1) -> np.ndarray:
    """The share c of ``grid`` with the lowest mean latency at each load, on its own seeds (apart from
    the evaluation's).

    One jitted call vmapped over grid x loads x episodes (c is traced): the best_clip rule at
    (cap, floor) = (c, c), which is c on every device exactly, so that the two searches share one
    compiled program. Returns float (len(loads),).
    """
    grid_a = jnp.asarray(grid, jnp.float32)
    score = _pair_scores(with_requests(env, requests), params, loads, jnp.stack([grid_a, grid_a], -1), episodes,
                         seed, warmup)
    return np.asarray(grid, np.float64)[np.argmin(score, axis=0)]


#: share levels of the best_clip search: its grid is the 15 (cap, floor) pairs of these with floor <= cap
#: (:func:`~jaxsplit.envs.actions.clip_pairs`), the rules of the default ``jaxsplit train`` action, so
#: best_clip is the best fixed rule that PPO's action can express. A finer grid (the tenths with 1/4 and
#: 1/3, 78 pairs) picked the same pair at loads 0.3, 0.6, 0.9 and 1.2 (alloc-v0, 16 episodes) for
#: 3 to 5x the search time once compiled.
CLIP_LEVELS = (0.1, 0.25, 1.0 / 3.0, 0.5, 1.0)


def search_best_clip(env: AllocationEnv, params: EnvParams, loads: Sequence[float],
                     levels: Sequence[float] = CLIP_LEVELS, episodes: int = 16, seed: int = SEARCH_SEED,
                     requests: int | None = None, warmup: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The (cap, floor) of the ``best_clip`` rule with the lowest mean latency at each load, on its own
    seeds (apart from the evaluation's).

    The grid is every pair of ``levels`` with floor <= cap (:func:`~jaxsplit.envs.actions.clip_pairs`,
    G = L (L + 1) / 2 pairs for L levels; floor = cap is the constant share cap). One jitted call
    vmapped over pairs x loads x episodes (the pair is traced).

    Returns:
      table: float (len(loads), 2), the (cap, floor) picked at each load.
      scores: float (G, len(loads)), the mean latency (s) over the search episodes of each pair, in the
        order of ``clip_pairs(levels)``.
    """
    levels = tuple(float(v) for v in levels)
    if not levels or any(not 0.0 < v <= 1.0 for v in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"field 'levels': must be distinct shares in (0, 1], got {levels!r}")
    pairs = clip_pairs(levels)  # (G, 2): cap, floor
    scores = _pair_scores(with_requests(env, requests), params, loads, pairs, episodes, seed, warmup)
    return np.asarray(pairs, np.float64)[np.argmin(scores, axis=0)], scores


def _pair_scores(env: AllocationEnv, params: EnvParams, loads: Sequence[float], pairs: jax.Array, episodes: int,
                 seed: int, warmup: float) -> np.ndarray:
    """Mean latency (s) of the best_clip rule at each (cap, floor) of ``pairs`` (G, 2) and load, over the
    episodes: float (G, len(loads)). The pairs are padded (with the last) to the next power of two, at
    least 16, so that grids of different sizes (best_constant's 10 shares, best_clip's 15 pairs) run one
    compiled program; every episode's keys depend on the load and episode only, not on the pair."""
    count = int(pairs.shape[0])
    rows = max(16, 1 << (count - 1).bit_length())
    padded = jnp.concatenate([pairs, jnp.broadcast_to(pairs[-1], (rows - count, 2))]) if rows > count else pairs
    recs = run_episodes(env, params, _clip_act(env), loads, episodes, seed, aux=padded)  # (rows, loads, episodes, R)
    recs = {k: v[:count] for k, v in recs.items()}
    return episode_metrics(recs, int(warmup * env.requests))["mean_latency_s"].mean(-1)  # (G, loads)


@functools.lru_cache(maxsize=16)
def _clip_act(env: AllocationEnv) -> Callable:
    """``act(key, obs, state, params, pair (2,))``: the best_clip rule at (cap, floor) = pair; one
    object per environment so that the jitted runner is cached across searches."""
    return lambda key, obs, state, params, pair: clip_free(env.free_shares(state).astype(jnp.float32),
                                                           pair[0], pair[1])


def markdown_table(rows: Sequence[dict[str, Any]], metric: str = "mean_latency_s") -> str:
    """The records as a Markdown table: one line per policy, one column per load, ``metric`` ± its
    95% half-width (4 significant digits)."""
    fmt = lambda x: "nan" if x is None or not np.isfinite(x) else f"{x:.4g}"  # None: a value read back from JSON
    loads = sorted({r["load"] for r in rows})
    lines = ["| policy | " + " | ".join(f"rho={load:g}" for load in loads) + " |", "|---|" + "---|" * len(loads)]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        cells = []
        for load in loads:
            r = next((r for r in rows if r["policy"] == policy and r["load"] == load), None)
            cells.append("" if r is None else f"{fmt(r[metric])} ± {fmt(r[metric + '_ci'])}")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
