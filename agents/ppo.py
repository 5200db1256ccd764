"""PPO for the allocation environment: the whole training run is one jitted function.

``make_train(config)`` returns ``train(key, hparams=None) -> (runner_state, metrics)``. Inside, a scan
over updates runs a rollout scan (vmapped environments), a reverse scan for GAE, and scans over
epochs and minibatches. Metrics are reduced to scalars per update inside the scan, so memory does
not grow with the run: ``metrics[name]`` has shape (num_updates,).

Two kinds of settings:

- :class:`PPOConfig` (static, a plain frozen dataclass) fixes array shapes and loop lengths:
  number of environments, rollout length, epochs, minibatches, network widths, environment name.
- :class:`HyperParams` (a ``flax.struct`` pytree of float32 scalars) holds everything a sweep varies:
  learning rate, entropy coefficient, clip range, gamma, GAE lambda, value coefficient, gradient
  clip, and the environment's utilisation weight and load range. Because they are traced,
  ``jax.jit(jax.vmap(train))(keys, hparams)`` trains a whole population in one call.

Truncated episodes are bootstrapped: the value target of the last step of an episode uses
``V(info["final_observation"])`` (the observation before the auto-reset), and only the
``terminated`` flag cuts the bootstrap; both flags cut the GAE trace.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from .distributions import (beta_entropy, beta_log_prob, beta_mean, beta_sample, categorical_entropy,
                            categorical_log_prob, categorical_mode, categorical_sample)
from .networks import ActorCritic


@dataclass(frozen=True)
class PPOConfig:
    """Static settings of a PPO run (they fix shapes and loop lengths).

    Attributes:
      env_name: environment registered in ``jaxsplit.envs.make``.
      env_overrides: keyword overrides for ``jaxsplit.envs.make`` (a tuple of (name, value) pairs).
      num_envs: environments stepped in parallel per agent.
      num_steps: rollout length per update (steps per environment).
      total_timesteps: environment steps per agent over the whole run.
      update_epochs: passes over each rollout.
      num_minibatches: minibatches per epoch (must divide num_envs * num_steps).
      hidden: hidden widths of the actor and the critic MLPs.
      anneal_lr: decay the learning rate linearly to 0 over the run.
      normalize_obs: standardise observations with running statistics (kept in the runner state and
        applied by the trained policy).
      normalize_reward: divide rewards by the running standard deviation of the discounted return (the
        allocation reward spans orders of magnitude between light and overloaded episodes).
      lr, ent_coef, clip_eps, vf_coef, gamma, gae_lambda, max_grad_norm: defaults of :class:`HyperParams`.
      util_weight, load_min, load_max: environment parameters overridden per agent (None keeps the env's).
      share_levels: 0 sends the sampled shares as they are; K > 0 rounds each share to the nearest of
        {0, 1/K, ..., 1/3, 1/2, 1} before the environment sees it (see :func:`snap_shares`), so that
        concurrent requests can pack a device exactly (two halves, three thirds). The log-probability
        is that of the continuous sample; the rounding is part of the environment from PPO's side.
      reward_groups: with normalize_reward, the number of offered-load groups (equal slices of the
        episode load range) that keep their own return statistics. Episodes at different loads then
        weigh alike in the gradient instead of the overloaded ones drowning the rest; each group's
        rewards are scaled by a positive constant only, and the load is in the observation, so the
        best policy of every episode is unchanged. 1 keeps one global statistic.
      init_concentration, init_mean: the initial Beta policy, alpha = 2 c m and beta = 2 c (1 - m), both > 1
        (see :class:`~jaxsplit.agents.networks.ActorCritic`).
      distribution: "beta" samples shares in [0, 1] (rounded to the levels when ``share_levels`` > 0);
        "categorical" samples a level of :func:`share_grid` directly (needs ``share_levels`` > 0), so
        that every level, the whole device included, is tried from the start and the log-probability
        is that of the share the environment receives.
      action: "per_device" samples one share per device (N outputs); "common" samples one share for
        the request and gives it on every device (one output, broadcast to N), the form of the
        constant-share baselines, which PPO then makes depend on the observation;
        "free_clip" samples a cap and a floor and gives every device its free share clipped to
        [floor, cap] (see :meth:`Trainer.shares`): the request takes what is free now, within bounds;
        "clip_pairs" (categorical only) samples one of the (cap, floor) pairs of nonzero levels with
        floor <= cap from a single categorical (:func:`clip_pairs`): the same rules as free_clip, with
        the common shares (floor = cap) among them as single choices instead of two agreeing draws.
      pair_levels: the share levels of the clip_pairs action, each in (0, 1] (for example
        (0.1, 0.25, 1/3, 0.5, 1)); empty (default) uses the nonzero levels of :func:`share_grid`.
    """

    env_name: str = "alloc-v0"
    env_overrides: tuple[tuple[str, Any], ...] = ()
    num_envs: int = 64
    num_steps: int = 64
    total_timesteps: int = 1_000_000
    update_epochs: int = 4
    num_minibatches: int = 8
    hidden: tuple[int, ...] = (64, 64)
    anneal_lr: bool = True
    normalize_obs: bool = True
    normalize_reward: bool = True
    lr: float = 3e-4
    ent_coef: float = 0.0
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_grad_norm: float = 0.5
    util_weight: float | None = None
    load_min: float | None = None
    load_max: float | None = None
    share_levels: int = 0
    reward_groups: int = 1
    init_concentration: float = 1.0 + math.log(2.0)
    init_mean: float = 0.5
    action: str = "per_device"
    distribution: str = "beta"
    pair_levels: tuple[float, ...] = ()

    @property
    def batch_size(self) -> int:
        """Transitions per update, num_envs * num_steps."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Updates in the run, total_timesteps // batch_size."""
        return self.total_timesteps // self.batch_size

    def validate(self) -> "PPOConfig":
        """Raise ValueError naming the first invalid field; return self."""
        for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches", "total_timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(f"num_minibatches={self.num_minibatches} must divide num_envs*num_steps={self.batch_size}")
        if self.num_updates < 1:
            raise ValueError(f"total_timesteps={self.total_timesteps} is below one update of "
                             f"num_envs*num_steps={self.batch_size} steps")
        if not self.hidden or any((not isinstance(h, int)) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be positive widths, got {self.hidden!r}")
        checks = {
            "lr": self.lr > 0, "ent_coef": self.ent_coef >= 0, "clip_eps": self.clip_eps > 0,
            "vf_coef": self.vf_coef >= 0, "gamma": 0 <= self.gamma <= 1, "gae_lambda": 0 <= self.gae_lambda <= 1,
            "max_grad_norm": self.max_grad_norm > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value == value and ok):
                raise ValueError(f"{name} is out of range: {value!r}")
        if not isinstance(self.share_levels, int) or self.share_levels < 0:
            raise ValueError(f"share_levels must be a non-negative integer, got {self.share_levels!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")
        if self.distribution == "categorical" and self.share_levels < 1:
            raise ValueError(f"share_levels must be >= 1 with distribution='categorical', got {self.share_levels!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if self.action == "clip_pairs" and self.distribution != "categorical":
            raise ValueError(f"action='clip_pairs' needs distribution='categorical', got {self.distribution!r}")
        levels = tuple(self.pair_levels)
        if levels and self.action != "clip_pairs":
            raise ValueError(f"pair_levels is only used by action='clip_pairs', got action={self.action!r}")
        if any(not (isinstance(v, (int, float)) and 0 < v <= 1) for v in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"pair_levels must be distinct shares in (0, 1], got {self.pair_levels!r}")
        if not isinstance(self.reward_groups, int) or self.reward_groups < 1:
            raise ValueError(f"reward_groups must be a positive integer, got {self.reward_groups!r}")
        c, m = self.init_concentration, self.init_mean
        if not (isinstance(m, (int, float)) and 0 < m < 1):
            raise ValueError(f"init_mean must be in (0, 1), got {m!r}")
        if not (isinstance(c, (int, float)) and math.isfinite(c) and 2 * c * min(m, 1 - m) > 1):
            raise ValueError(f"init_concentration={c!r} with init_mean={m!r} gives an initial Beta concentration "
                             f"<= 1 (need 2 * c * min(m, 1 - m) > 1)")
        if self.load_min is not None and self.load_min <= 0:
            raise ValueError(f"load_min must be > 0, got {self.load_min!r}")
        if self.load_min is not None and self.load_max is not None and self.load_min > self.load_max:
            raise ValueError(f"load_min={self.load_min} must not exceed load_max={self.load_max}")
        return self


@struct.dataclass
class HyperParams:
    """Traced hyperparameters (float32 scalars, or shape (P,) for a population of P agents)."""

    lr: jax.Array
    ent_coef: jax.Array
    clip_eps: jax.Array
    vf_coef: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    max_grad_norm: jax.Array
    util_weight: jax.Array
    load_min: jax.Array
    load_max: jax.Array

    @classmethod
    def from_config(cls, config: PPOConfig, env_params: Any) -> "HyperParams":
        """Scalars from the config, falling back to ``env_params`` for the environment fields."""
        def pick(name: str, value):
            return jnp.asarray(getattr(env_params, name) if value is None else value, jnp.float32)

        return cls(lr=jnp.float32(config.lr), ent_coef=jnp.float32(config.ent_coef),
                   clip_eps=jnp.float32(config.clip_eps), vf_coef=jnp.float32(config.vf_coef),
                   gamma=jnp.float32(config.gamma), gae_lambda=jnp.float32(config.gae_lambda),
                   max_grad_norm=jnp.float32(config.max_grad_norm),
                   util_weight=pick("util_weight", config.util_weight),
                   load_min=pick("load_min", config.load_min), load_max=pick("load_max", config.load_max))

    def apply_to_env(self, env_params: Any) -> Any:
        """Environment parameters with this agent's utilisation weight and load range."""
        return env_params.replace(util_weight=self.util_weight, load_min=self.load_min, load_max=self.load_max)


@struct.dataclass
class RunningStats:
    """Running mean and variance over a batch axis (Chan et al.'s parallel update).

    Attributes:
      mean, var: shape of one sample (e.g. (obs_dim,) or ()).
      count: float32 scalar, samples seen (starts at 1e-4).
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...] = ()) -> "RunningStats":
        return cls(mean=jnp.zeros(shape, jnp.float32), var=jnp.ones(shape, jnp.float32), count=jnp.float32(1e-4))

    def update(self, x: jax.Array) -> "RunningStats":
        """Fold in a batch ``x`` of shape (B,) + sample shape."""
        return self._merge(x.mean(0), x.var(0), jnp.float32(x.shape[0]))

    def _merge(self, b_mean: jax.Array, b_var: jax.Array, b_count: jax.Array) -> "RunningStats":
        """These statistics combined with those of a batch (mean, variance, count)."""
        total = self.count + b_count
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        return RunningStats(mean=self.mean + delta * b_count / total, var=m2 / total, count=total)

    @classmethod
    def create_grouped(cls, groups: int) -> "RunningStats":
        """Scalar statistics for each of ``groups`` groups (mean, var and count of shape (groups,))."""
        return cls(mean=jnp.zeros((groups,), jnp.float32), var=jnp.ones((groups,), jnp.float32),
                   count=jnp.full((groups,), 1e-4, jnp.float32))

    def update_grouped(self, x: jax.Array, group: jax.Array) -> "RunningStats":
        """Fold in samples ``x`` (B,) into per-group statistics (shape (G,)); ``group`` (B,) int32 in [0, G)."""
        onehot = jax.nn.one_hot(group, self.mean.shape[0], dtype=x.dtype)  # (B, G)
        b_count = onehot.sum(0)
        safe = jnp.maximum(b_count, 1.0)
        b_mean = (onehot * x[:, None]).sum(0) / safe
        b_var = (onehot * (x[:, None] - b_mean) ** 2).sum(0) / safe
        return self._merge(b_mean, b_var, b_count)

    def normalize(self, x: jax.Array) -> jax.Array:
        """(x - mean) / std, clipped to [-10, 10]."""
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -10.0, 10.0)


@struct.dataclass
class RunnerState:
    """Everything a run carries from one update to the next (and what a checkpoint holds).

    Attributes:
      params: network parameters.
      opt_state: optimiser state.
      env_state: environment states, leading axis num_envs.
      obs: current raw observations, (num_envs, obs_dim) float32.
      obs_stats: running observation statistics (used when normalize_obs).
      ret_stats: running statistics of the discounted return (used when normalize_reward).
      returns: (num_envs,) discounted return accumulated in the present episodes.
      key: raw uint32 PRNG key, (2,).
      update: updates done so far, int32 scalar.
    """

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    obs_stats: RunningStats
    ret_stats: RunningStats
    returns: jax.Array
    key: jax.Array
    update: jax.Array


@struct.dataclass
class Transition:
    """One rollout step for every environment; fields have leading axes (num_steps, num_envs)."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    raw_reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    latency: jax.Array
    utilization: jax.Array
    invalid: jax.Array


#: names of the per-update metrics (each of shape (num_updates,) from ``train``).
METRICS = ("reward", "latency", "utilization", "invalid_rate", "episodes", "value_loss",
           "actor_loss", "entropy", "approx_kl", "clip_frac", "grad_norm", "lr")


#: action forms of :class:`PPOConfig` (``action``).
ACTIONS = ("per_device", "common", "free_clip", "clip_pairs")
#: action distributions of :class:`PPOConfig` (``distribution``).
DISTRIBUTIONS = ("beta", "categorical")


def share_grid(levels: int) -> jax.Array:
    """The sorted share levels {0} + {1/k : k = levels..1}; float32 (levels + 1,)."""
    return jnp.asarray([0.0] + [1.0 / k for k in range(levels, 0, -1)], jnp.float32)


def clip_pairs(levels: int | Sequence[float]) -> jax.Array:
    """The (cap, floor) pairs of ``action="clip_pairs"``: every pair of nonzero levels of
    :func:`share_grid` (``levels`` an int) or of the given shares (a sequence) with floor <= cap,
    ordered by cap then floor; float32 (L (L + 1) / 2, 2) for L levels. A pair with floor = cap is the
    common share cap."""
    if isinstance(levels, int):
        grid = [1.0 / k for k in range(levels, 0, -1)]  # the nonzero levels of share_grid, in numbers
    else:
        grid = sorted(float(v) for v in levels)
    pairs = [(cap, floor) for i, cap in enumerate(grid) for floor in grid[: i + 1]]
    return jnp.asarray(pairs, jnp.float32)


def snap_shares(action: jax.Array, levels: int) -> jax.Array:
    """Round every share of ``action`` (..., N) to the nearest level of :func:`share_grid` (identity
    when ``levels`` is 0)."""
    if levels == 0:
        return action
    grid = share_grid(levels)
    return grid[jnp.argmin(jnp.abs(action[..., None] - grid), axis=-1)]


def make_env(config: PPOConfig) -> tuple[Any, Any]:
    """``jaxsplit.envs.make(config.env_name, **overrides)``."""
    from jaxsplit import envs

    return envs.make(config.env_name, **dict(config.env_overrides))


def make_optimizer(config: PPOConfig, hp: HyperParams) -> optax.GradientTransformation:
    """Global-norm clipping, Adam, and a (linearly annealed) learning rate, all from traced ``hp``."""
    steps = config.num_updates * config.update_epochs * config.num_minibatches

    def learning_rate(count: jax.Array) -> jax.Array:
        if not config.anneal_lr:
            return hp.lr
        # clamped: XLA may divide by a constant as a product with its reciprocal, 1 ulp above 1 at the end
        return hp.lr * jnp.maximum(1.0 - jnp.minimum(count, steps).astype(jnp.float32) / steps, 0.0)

    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.scale_by_adam(eps=1e-5),
                       optax.scale_by_learning_rate(learning_rate))


def gae(reward: jax.Array, value: jax.Array, next_value: jax.Array, terminated: jax.Array,
        truncated: jax.Array, gamma: jax.Array, gae_lambda: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a rollout; every input is (T, B), returns (adv, target).

    ``next_value[t]`` is V of the true next observation of step t (for a truncated step, the final
    observation before the auto-reset), so truncated episodes are bootstrapped:
    delta_t = r_t + gamma * next_value_t * (1 - terminated_t) - value_t, and
    A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1} with done = terminated or truncated.
    The value target is A_t + value_t.
    """
    not_term = 1.0 - terminated.astype(reward.dtype)
    not_done = 1.0 - jnp.logical_or(terminated, truncated).astype(reward.dtype)
    delta = reward + gamma * next_value * not_term - value

    def back(carry, x):
        d, nd = x
        carry = d + gamma * gae_lambda * nd * carry
        return carry, carry

    _, adv = jax.lax.scan(back, jnp.zeros_like(delta[0]), (delta, not_done), reverse=True)
    return adv, adv + value


class Trainer:
    """The pieces of a PPO run: ``init``, ``update`` (one update) and ``run`` (K updates, scanned).

    ``make_train`` composes them into one function; the command line calls ``run`` in chunks so that it
    can log and checkpoint between them (a chunked run equals an unchunked one for the same chunks).
    """

    def __init__(self, config: PPOConfig, env: Any = None, env_params: Any = None):
        self.config = config.validate()
        if env is None:
            env, env_params = make_env(config)
        self.env, self.env_params = env, env_params
        #: dimension of the sampled action: N shares, or one common share
        self.action_dim = {"common": 1, "free_clip": 2, "clip_pairs": 1}.get(config.action, int(env.num_devices))
        self.categorical = config.distribution == "categorical"
        #: the (cap, floor) pairs of action="clip_pairs" (see :func:`clip_pairs`)
        self.pairs = clip_pairs(tuple(config.pair_levels) or config.share_levels)
        #: categories of each categorical output: the share levels, or the (cap, floor) pairs
        self.choices = self.pairs.shape[0] if config.action == "clip_pairs" else config.share_levels + 1
        self.network = ActorCritic(num_devices=self.action_dim, hidden=tuple(config.hidden),
                                    init_concentration=float(config.init_concentration),
                                    init_mean=float(config.init_mean),
                                    levels=self.choices - 1 if self.categorical else 0)

    def shares(self, action: jax.Array, obs: jax.Array) -> jax.Array:
        """The shares (..., N) the environment receives for a sampled ``action`` (..., action_dim) in
        the (raw) observation ``obs`` (..., obs_dim): the level of each index (categorical) or the
        share rounded to the levels (Beta); broadcast to every device for ``action="common"``; for
        ``action="free_clip"`` the two values are a cap and a floor and every device gets its free
        share (the observation's first N entries) clipped to [min(floor, cap), cap]; for
        ``action="clip_pairs"`` the index picks the (cap, floor) pair of :func:`clip_pairs`."""
        n = self.env.num_devices
        if self.config.action == "clip_pairs":
            pair = self.pairs[action[..., 0].astype(jnp.int32)]
            cap, floor = pair[..., :1], pair[..., 1:2]
            return jnp.clip(obs[..., :n].astype(pair.dtype), floor, cap)
        if self.categorical:
            action = share_grid(self.config.share_levels)[action.astype(jnp.int32)]
        else:
            action = snap_shares(action, self.config.share_levels)
        if self.config.action == "free_clip":
            cap, floor = action[..., :1], action[..., 1:2]
            return jnp.clip(obs[..., :n].astype(action.dtype), jnp.minimum(floor, cap), cap)
        if self.action_dim != n:
            action = jnp.broadcast_to(action, action.shape[:-1] + (n,))
        return action

    def sample(self, key: jax.Array, dist: tuple) -> jax.Array:
        """An action (..., action_dim) from the network's distribution parameters ``dist``."""
        return categorical_sample(key, *dist) if self.categorical else beta_sample(key, *dist)

    def log_prob(self, action: jax.Array, dist: tuple) -> jax.Array:
        """Log-probability (density for Beta) of ``action``, summed over the action axis; (...,)."""
        return categorical_log_prob(action, *dist) if self.categorical else beta_log_prob(action, *dist)

    def entropy(self, dist: tuple) -> jax.Array:
        """Entropy of the distribution (differential for Beta), summed over the action axis; (...,)."""
        return categorical_entropy(*dist) if self.categorical else beta_entropy(*dist)

    def mode(self, dist: tuple) -> jax.Array:
        """The deterministic action: the most probable level (categorical) or the Beta mean."""
        return categorical_mode(*dist) if self.categorical else beta_mean(*dist)

    def default_hparams(self) -> HyperParams:
        """The config's hyperparameters as traced scalars."""
        return HyperParams.from_config(self.config, self.env_params)

    # -- pieces ---------------------------------------------------------------------------------
    def init(self, key: jax.Array, hp: HyperParams) -> RunnerState:
        """Fresh network, optimiser and environments from a raw (2,) uint32 key."""
        cfg, env = self.config, self.env
        env_params = hp.apply_to_env(self.env_params)
        key, k_net, k_env = jax.random.split(key, 3)
        params = self.network.init(k_net, jnp.zeros((env.obs_dim,), jnp.float32))
        opt_state = make_optimizer(cfg, hp).init(params)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_env, cfg.num_envs), env_params)
        ret_stats = RunningStats.create_grouped(cfg.reward_groups) if cfg.reward_groups > 1 else RunningStats.create()
        return RunnerState(params=params, opt_state=opt_state, env_state=env_state, obs=obs.astype(jnp.float32),
                           obs_stats=RunningStats.create((env.obs_dim,)), ret_stats=ret_stats,
                           returns=jnp.zeros((cfg.num_envs,), jnp.float32), key=key, update=jnp.int32(0))

    def load_group(self, load: jax.Array, env_params: Any) -> jax.Array:
        """Offered-load group, int32 of the shape of ``load`` (the episode's rho, ``info["load"]``)."""
        g = self.config.reward_groups
        span = jnp.maximum(env_params.load_max - env_params.load_min, 1e-6)
        frac = (load - env_params.load_min) / span
        return jnp.clip(jnp.floor(frac * g), 0, g - 1).astype(jnp.int32)

    def rollout(self, runner: RunnerState, hp: HyperParams) -> tuple[RunnerState, Transition]:
        """``num_steps`` steps of every environment under the current policy."""
        cfg, env, net = self.config, self.env, self.network
        env_params = hp.apply_to_env(self.env_params)

        def step(carry, _):
            env_state, obs, obs_stats, ret_stats, returns, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            if cfg.normalize_obs:
                obs_stats = obs_stats.update(obs)
            norm_obs = obs_stats.normalize(obs) if cfg.normalize_obs else obs
            dist, value = net.apply(runner.params, norm_obs)
            action = self.sample(k_act, dist)
            log_prob = self.log_prob(action, dist)
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None))(jax.random.split(k_env, cfg.num_envs), env_state,
                                                   self.shares(action, obs), env_params)
            reward = reward.astype(jnp.float32)
            final_obs = info["final_observation"].astype(jnp.float32)
            returns = returns * hp.gamma + reward
            if cfg.normalize_reward:
                if cfg.reward_groups > 1:
                    group = self.load_group(info["load"], env_params)
                    ret_stats = ret_stats.update_grouped(returns, group)
                    scaled = reward / jnp.sqrt(ret_stats.var[group] + 1e-8)
                else:
                    ret_stats = ret_stats.update(returns)
                    scaled = reward / jnp.sqrt(ret_stats.var + 1e-8)
            else:
                scaled = reward
            returns = jnp.where(jnp.logical_or(terminated, truncated), 0.0, returns)
            tr = Transition(obs=norm_obs, action=action, log_prob=log_prob, value=value, reward=scaled,
                            raw_reward=reward, terminated=terminated, truncated=truncated,
                            next_obs=obs_stats.normalize(final_obs) if cfg.normalize_obs else final_obs,
                            latency=info["latency"].astype(jnp.float32),
                            utilization=info["utilization"].astype(jnp.float32),
                            invalid=info["invalid"].astype(jnp.float32))
            return (env_state, next_obs.astype(jnp.float32), obs_stats, ret_stats, returns, key), tr

        carry = (runner.env_state, runner.obs, runner.obs_stats, runner.ret_stats, runner.returns, runner.key)
        (env_state, obs, obs_stats, ret_stats, returns, key), traj = jax.lax.scan(step, carry, None,
                                                                                  length=cfg.num_steps)
        return runner.replace(env_state=env_state, obs=obs, obs_stats=obs_stats, ret_stats=ret_stats,
                              returns=returns, key=key), traj

    def advantages(self, params: Any, traj: Transition, hp: HyperParams) -> tuple[jax.Array, jax.Array]:
        """GAE advantages and value targets, each (num_steps, num_envs); see :func:`gae`."""
        _, next_value = self.network.apply(params, traj.next_obs)
        return gae(traj.reward, traj.value, next_value, traj.terminated, traj.truncated, hp.gamma, hp.gae_lambda)

    def loss(self, params: Any, batch: tuple, hp: HyperParams) -> tuple[jax.Array, dict]:
        """Clipped-surrogate PPO loss on one minibatch; returns (loss, diagnostics)."""
        traj, adv, target = batch
        dist, value = self.network.apply(params, traj.obs)
        log_prob = self.log_prob(traj.action, dist)
        ratio = jnp.exp(log_prob - traj.log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        actor_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - hp.clip_eps, 1 + hp.clip_eps) * adv).mean()
        v_clipped = traj.value + jnp.clip(value - traj.value, -hp.clip_eps, hp.clip_eps)
        value_loss = 0.5 * jnp.maximum((value - target) ** 2, (v_clipped - target) ** 2).mean()
        entropy = self.entropy(dist).mean()
        total = actor_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy
        diag = {"value_loss": value_loss, "actor_loss": actor_loss, "entropy": entropy,
                "approx_kl": ((ratio - 1) - jnp.log(ratio)).mean(),
                "clip_frac": (jnp.abs(ratio - 1) > hp.clip_eps).astype(jnp.float32).mean()}
        return total, diag

    def update(self, runner: RunnerState, hp: HyperParams) -> tuple[RunnerState, dict[str, jax.Array]]:
        """One PPO update: rollout, GAE, epochs x minibatches; metrics are scalars."""
        cfg = self.config
        optimizer = make_optimizer(cfg, hp)
        runner, traj = self.rollout(runner, hp)
        adv, target = self.advantages(runner.params, traj, hp)
        flat = jax.tree.map(lambda x: x.reshape((cfg.batch_size,) + x.shape[2:]), (traj, adv, target))
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)

        def minibatch(carry, batch):
            params, opt_state = carry
            (_, diag), grads = grad_fn(params, batch, hp)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            diag["grad_norm"] = optax.tree.norm(grads)
            return (optax.apply_updates(params, updates), opt_state), diag

        def epoch(carry, key):
            perm = jax.random.permutation(key, cfg.batch_size)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape((cfg.num_minibatches, -1) + x.shape[1:]), flat)
            return jax.lax.scan(minibatch, carry, shuffled)

        key, k_epochs = jax.random.split(runner.key)
        (params, opt_state), diags = jax.lax.scan(epoch, (runner.params, runner.opt_state),
                                                  jax.random.split(k_epochs, cfg.update_epochs))
        metrics = {k: v.mean() for k, v in diags.items()}
        steps = cfg.update_epochs * cfg.num_minibatches
        count = (runner.update + 1) * steps
        metrics["lr"] = hp.lr * jnp.maximum(1.0 - jnp.minimum(count, cfg.num_updates * steps)
                                            / (cfg.num_updates * steps), 0.0) if cfg.anneal_lr else hp.lr
        metrics.update(
            reward=traj.raw_reward.mean(), latency=traj.latency.mean(),
            utilization=traj.utilization.mean(), invalid_rate=traj.invalid.mean(),
            episodes=jnp.logical_or(traj.terminated, traj.truncated).sum().astype(jnp.float32))
        metrics = {k: metrics[k].astype(jnp.float32) for k in METRICS}
        runner = runner.replace(params=params, opt_state=opt_state, key=key, update=runner.update + 1)
        return runner, metrics

    def run(self, runner: RunnerState, hp: HyperParams, num_updates: int) -> tuple[RunnerState, dict]:
        """``num_updates`` (static) updates in one scan; metrics have shape (num_updates,)."""
        return jax.lax.scan(lambda r, _: self.update(r, hp), runner, None, length=num_updates)

    def train(self, key: jax.Array, hp: HyperParams | None = None) -> tuple[RunnerState, dict]:
        """The whole run: ``init`` then ``config.num_updates`` updates."""
        hp = self.default_hparams() if hp is None else hp
        return self.run(self.init(key, hp), hp, self.config.num_updates)

    def policy(self, runner: RunnerState, deterministic: bool = True) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """``policy_fn(key, obs (..., obs_dim)) -> shares (..., N)`` of a trained runner state.

        Observations are normalised with the run's final statistics; the action is the mode
        (``deterministic``: the most probable level, or the Beta mean) or a sample, turned into
        shares by :meth:`shares`.
        """
        net, cfg, params, stats = self.network, self.config, runner.params, runner.obs_stats

        def policy_fn(key: jax.Array, obs: jax.Array) -> jax.Array:
            obs = obs.astype(jnp.float32)
            dist, _ = net.apply(params, stats.normalize(obs) if cfg.normalize_obs else obs)
            return self.shares(self.mode(dist) if deterministic else self.sample(key, dist), obs)

        return policy_fn


def make_train(config: PPOConfig, env: Any = None, env_params: Any = None
               ) -> Callable[..., tuple[RunnerState, dict[str, jax.Array]]]:
    """``train(key, hparams=None) -> (runner_state, metrics)``, ready for ``jax.jit`` and ``jax.vmap``.

    ``key`` is a raw (2,) uint32 key (``jax.random.PRNGKey``); ``metrics[name]`` has shape
    (config.num_updates,). ``train.trainer`` is the underlying :class:`Trainer`.
    """
    trainer = Trainer(config, env, env_params)

    def train(key: jax.Array, hparams: HyperParams | None = None):
        return trainer.train(key, hparams)

    train.trainer = trainer  # type: ignore[attr-defined]
    return train
