"""PPO: the whole training run is one jitted function, for any environment with spaces.

``make_train(config, env, env_params)`` returns ``train(key, hparams=None) -> (runner_state, metrics)``.
Inside, a scan over updates runs a rollout scan (vmapped environments), a reverse scan for GAE, and scans
over epochs and minibatches. Metrics are reduced to scalars per update inside the scan, so memory does
not grow with the run: ``metrics[name]`` has shape (num_updates,).

The trainer sees the environment only through ``reset(key, params)``, ``step(key, state, action, params)``
(gymnax conventions, auto-reset with ``info["final_observation"]``), ``observation_space(params)`` and
``action_space(params)``. A :class:`~jaxsplit.envs.spaces.Box` action gets a Beta policy per entry (scaled
to the box), a :class:`~jaxsplit.envs.spaces.Discrete` or :class:`~jaxsplit.envs.spaces.MultiDiscrete`
action a categorical one. How an action becomes the allocation environment's shares is the business of
the action wrappers of :mod:`jaxsplit.envs.actions`. Per-group reward statistics (``reward_groups``)
read ``info["group"]``, a value in [0, 1] that the environment documents (the allocation environment:
the episode's place in its load range).

Every setting is declared once, in :class:`PPOConfig`, with its default (the main job's) and its help.
Settings marked traced (:func:`traced`) are the fields of :class:`HyperParams`, float32 arrays inside the
jitted program: ``jax.jit(jax.vmap(train))(keys, hparams)`` trains a population that differs in them.
``HyperParams.env`` holds the environment's params, also traced, so a population may differ in any
environment parameter too. The other settings fix shapes and loop lengths (static).

Truncated episodes are bootstrapped: the value target of the last step of an episode uses
``V(info["final_observation"])`` (the observation before the auto-reset), and only the
``terminated`` flag cuts the bootstrap; both flags cut the GAE trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxsplit import settings
from jaxsplit.envs import spaces

from .distributions import (beta_entropy, beta_log_prob, beta_mean, beta_sample, categorical_entropy,
                            categorical_log_prob, categorical_mode, categorical_sample)
from .networks import ActorCritic, SetActorCritic


_DEFERRED: contextvars.ContextVar[bool] = contextvars.ContextVar("ppo_config_checks_deferred", default=False)


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    """Build :class:`PPOConfig` objects without checking them inside the block; the caller then calls
    ``validate()`` itself (the command line: tyro would wrap a constructor's error in its own box)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def traced(default: float) -> Any:
    """A :class:`PPOConfig` field that is traced (a field of :class:`HyperParams`, sweepable)."""
    return field(default=default, metadata={"traced": True})


@dataclass(frozen=True)
class PPOConfig:
    """The settings of a PPO run (defaults: the main job's, ``jaxsplit train``). See docs/TRAINING.md
    for what chose them. Settings marked (traced) may differ between the agents of one population;
    the others fix shapes and loop lengths."""

    total_timesteps: int = 24_000_000
    """environment steps over the whole run"""
    num_envs: int = 512
    """environments stepped in parallel"""
    num_steps: int = 64
    """rollout length per update (steps per environment)"""
    update_epochs: int = 4
    """passes over each rollout"""
    num_minibatches: int = 8
    """minibatches per epoch (must divide num_envs * num_steps)"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and the critic"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over the run"""
    normalize_obs: bool = True
    """standardise observations with running statistics (kept in the runner state, applied by the policy)"""
    normalize_reward: bool = True
    """divide rewards by the running standard deviation of the discounted return"""
    reward_groups: int = 8
    """with normalize_reward, groups of episodes (equal slices of info["group"], the load range) that keep
    their own return statistics, so that episodes at every load weigh alike (1: one global statistic)"""
    init_concentration: float = 10.0
    """Beta actions only: concentration c of the initial Beta (alpha = 2 c m, beta = 2 c (1 - m)); larger
    explores less"""
    init_mean: float = 0.5
    """Beta actions only: mean m of the initial Beta"""
    lr: float = traced(1e-3)
    """Adam learning rate (annealed linearly to 0 with anneal_lr) (traced)"""
    ent_coef: float = traced(0.03)
    """entropy bonus coefficient (traced)"""
    clip_eps: float = traced(0.2)
    """PPO clip range (policy ratio and value) (traced)"""
    vf_coef: float = traced(0.5)
    """value loss coefficient (traced)"""
    gamma: float = traced(0.97)
    """discount per step (per request) (traced)"""
    gae_lambda: float = traced(0.9)
    """GAE lambda (traced)"""
    max_grad_norm: float = traced(0.5)
    """global gradient norm clip (traced)"""

    def __post_init__(self) -> None:
        # checked where it is made (Python API, a run's config.json); the command line defers the
        # check until tyro has built it, so that its error stays one line (see deferred_checks)
        if not _DEFERRED.get():
            self.validate()

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
        for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches", "total_timesteps", "reward_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"field {name!r}: must be a positive integer, got {value!r}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(f"field 'num_minibatches': {self.num_minibatches} must divide num_envs * num_steps = "
                             f"{self.batch_size}")
        if self.num_updates < 1:
            raise ValueError(f"field 'total_timesteps': {self.total_timesteps} is below one update of "
                             f"num_envs * num_steps = {self.batch_size} steps")
        if not self.hidden or any((not isinstance(h, int)) or h < 1 for h in self.hidden):
            raise ValueError(f"field 'hidden': must be positive widths, got {self.hidden!r}")
        checks = {
            "lr": lambda v: v > 0, "ent_coef": lambda v: v >= 0, "clip_eps": lambda v: v > 0,
            "vf_coef": lambda v: v >= 0, "gamma": lambda v: 0 <= v <= 1, "gae_lambda": lambda v: 0 <= v <= 1,
            "max_grad_norm": lambda v: v > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
                raise ValueError(f"field {name!r}: out of range, got {value!r}")
        c, m = self.init_concentration, self.init_mean
        if not (isinstance(m, (int, float)) and 0 < m < 1):
            raise ValueError(f"field 'init_mean': must be in (0, 1), got {m!r}")
        if not (isinstance(c, (int, float)) and math.isfinite(c) and 2 * c * min(m, 1 - m) > 1):
            raise ValueError(f"field 'init_concentration': {c!r} with init_mean={m!r} gives an initial Beta "
                             f"concentration <= 1 (need 2 * c * min(m, 1 - m) > 1)")
        return self

    def to_json(self) -> dict[str, Any]:
        return settings.to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PPOConfig":
        return settings.from_json(cls, data, "PPO")


#: the traced settings of :class:`PPOConfig`, in declaration order
TRACED = tuple(f.name for f in dataclasses.fields(PPOConfig) if f.metadata.get("traced"))
#: the static settings of :class:`PPOConfig`
STATIC = tuple(f.name for f in dataclasses.fields(PPOConfig) if not f.metadata.get("traced"))

_HyperParamsBase = dataclasses.make_dataclass(
    "HyperParams", [(name, jax.Array) for name in TRACED] + [("env", Any)], frozen=True)
_HyperParamsBase.__module__ = __name__


@struct.dataclass
class HyperParams(_HyperParamsBase):
    """The traced settings: one float32 array per name of :data:`TRACED` (scalars, or (P,) for a
    population of P agents), and ``env``, the environment's params (leaves scalar or with leading P)."""

    @classmethod
    def from_config(cls, config: PPOConfig, env_params: Any) -> "HyperParams":
        """The config's traced values as float32 scalars, with ``env_params``."""
        return cls(**{name: jnp.float32(getattr(config, name)) for name in TRACED}, env=env_params)


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
    """One rollout step for every environment; fields have leading axes (num_steps, num_envs).

    ``info`` holds the environment's ``info`` entries named in :data:`INFO_METRICS` that it provides."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    raw_reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    info: dict[str, jax.Array]


#: PPO's per-update metrics (each of shape (num_updates,) from ``train``).
PPO_METRICS = ("reward", "episodes", "value_loss", "actor_loss", "entropy", "approx_kl", "clip_frac",
               "grad_norm", "lr")
#: ``info`` entries averaged per update when the environment provides them: info name -> metric name.
INFO_METRICS = {"latency": "latency", "utilization": "utilization", "invalid": "invalid_rate"}


def learning_rate(config: PPOConfig, hp: HyperParams) -> optax.Schedule:
    """The learning rate per optimiser step: hp.lr, linearly annealed to 0 over the run with anneal_lr."""
    if not config.anneal_lr:
        return optax.constant_schedule(hp.lr)
    steps = config.num_updates * config.update_epochs * config.num_minibatches
    schedule = optax.linear_schedule(hp.lr, 0.0, steps)
    # XLA may divide by a constant as a product with its reciprocal, 1 ulp past the end: never below 0
    return lambda count: jnp.maximum(schedule(count), 0.0)


def make_optimizer(config: PPOConfig, hp: HyperParams) -> optax.GradientTransformation:
    """Global-norm clipping, Adam, and the learning rate of :func:`learning_rate`, all from traced ``hp``."""
    return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.scale_by_adam(eps=1e-5),
                       optax.scale_by_learning_rate(learning_rate(config, hp)))


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

    Args:
      config: the settings.
      env: any environment with ``reset``, ``step``, ``observation_space`` and ``action_space`` (see the
        module docstring).
      env_params: its params (the default of ``HyperParams.env``).
    """

    def __init__(self, config: PPOConfig, env: Any, env_params: Any):
        self.config = config.validate()
        self.env, self.env_params = env, env_params
        obs_space = env.observation_space(env_params)
        if len(obs_space.shape) != 1:
            raise ValueError(f"the observation must be a vector, got shape {obs_space.shape}")
        #: length of the observation vector
        self.obs_dim = int(obs_space.shape[0])
        #: the observation's sets of items (a SetLayout), or None for a plain vector
        self.layout = getattr(obs_space, "layout", None)
        self.action_space = space = env.action_space(env_params)
        if isinstance(space, spaces.Box):
            if len(space.shape) != 1 or not (math.isfinite(space.low) and math.isfinite(space.high)):
                raise ValueError(f"a Box action needs finite bounds and one axis, got {space!r}")
            self.categorical, outputs, choices = False, int(space.shape[0]), 0
        elif isinstance(space, spaces.Discrete):
            self.categorical, outputs, choices = True, 1, int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            if len(set(space.nvec)) != 1:
                raise ValueError(f"a MultiDiscrete action needs the same number of choices per entry, got {space.nvec}")
            self.categorical, outputs, choices = True, len(space.nvec), int(space.nvec[0])
        else:
            raise ValueError(f"unsupported action space {space!r} (Box, Discrete or MultiDiscrete)")
        #: entries of the sampled action (1 for a Discrete action)
        self.action_dim = outputs
        common = dict(num_devices=outputs, hidden=tuple(config.hidden),
                      init_concentration=float(config.init_concentration), init_mean=float(config.init_mean),
                      levels=choices - 1 if self.categorical else 0)
        if self.layout is None:
            self.network = ActorCritic(**common)
        else:
            per_item = getattr(space, "items", None)
            if per_item is not None and self.layout.items(per_item) != outputs:
                raise ValueError(f"the action has {outputs} entries, one per item of the observation's "
                                 f"{per_item!r} set, which has {self.layout.items(per_item)}")
            self.network = SetActorCritic(layout=self.layout, per_item=per_item, **common)

    def env_action(self, action: jax.Array) -> jax.Array:
        """The environment's action for a sampled ``action`` (..., action_dim): the index of a Discrete
        action, the indices of a MultiDiscrete one, a Beta sample scaled to the Box."""
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return action[..., 0].astype(space.dtype)
        if isinstance(space, spaces.MultiDiscrete):
            return action.astype(space.dtype)
        if (space.low, space.high) != (0.0, 1.0):
            return space.low + (space.high - space.low) * action
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
        """The config's traced settings as scalars, with the trainer's environment params."""
        return HyperParams.from_config(self.config, self.env_params)

    # -- pieces ---------------------------------------------------------------------------------
    def init(self, key: jax.Array, hp: HyperParams) -> RunnerState:
        """Fresh network, optimiser and environments from a raw (2,) uint32 key."""
        cfg, env = self.config, self.env
        key, k_net, k_env = jax.random.split(key, 3)
        params = self.network.init(k_net, jnp.zeros((self.obs_dim,), jnp.float32))
        opt_state = make_optimizer(cfg, hp).init(params)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_env, cfg.num_envs), hp.env)
        ret_stats = RunningStats.create_grouped(cfg.reward_groups) if cfg.reward_groups > 1 else RunningStats.create()
        return RunnerState(params=params, opt_state=opt_state, env_state=env_state, obs=obs.astype(jnp.float32),
                           obs_stats=RunningStats.create((self.obs_dim,)), ret_stats=ret_stats,
                           returns=jnp.zeros((cfg.num_envs,), jnp.float32), key=key, update=jnp.int32(0))

    def tie(self, stats: RunningStats) -> RunningStats:
        """Observation statistics shared by the items of each set (:meth:`SetLayout.tie`), so that
        normalising keeps the network invariant to the order of the items; unchanged for a plain vector."""
        if self.layout is None:
            return stats
        mean, var = self.layout.tie(stats.mean, stats.var)
        return stats.replace(mean=mean, var=var)

    def reward_group(self, info: dict[str, jax.Array]) -> jax.Array:
        """The reward-statistics group of every environment, int32 (num_envs,), from ``info["group"]``."""
        if "group" not in info:
            raise ValueError("reward_groups > 1 needs the environment's info['group'] (a value in [0, 1]); "
                             "this environment has none: set reward_groups=1")
        g = self.config.reward_groups
        return jnp.clip(jnp.floor(info["group"].astype(jnp.float32) * g), 0, g - 1).astype(jnp.int32)

    def rollout(self, runner: RunnerState, hp: HyperParams) -> tuple[RunnerState, Transition]:
        """``num_steps`` steps of every environment under the current policy."""
        cfg, env, net = self.config, self.env, self.network

        def step(carry, _):
            env_state, obs, obs_stats, ret_stats, returns, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            if cfg.normalize_obs:
                obs_stats = self.tie(obs_stats.update(obs))
            norm_obs = obs_stats.normalize(obs) if cfg.normalize_obs else obs
            dist, value = net.apply(runner.params, norm_obs)
            action = self.sample(k_act, dist)
            log_prob = self.log_prob(action, dist)
            next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None))(jax.random.split(k_env, cfg.num_envs), env_state,
                                                   self.env_action(action), hp.env)
            reward = reward.astype(jnp.float32)
            final_obs = info["final_observation"].astype(jnp.float32)
            returns = returns * hp.gamma + reward
            if cfg.normalize_reward:
                if cfg.reward_groups > 1:
                    group = self.reward_group(info)
                    ret_stats = ret_stats.update_grouped(returns, group)
                    scaled = reward / jnp.sqrt(ret_stats.var[group] + 1e-8)
                else:
                    ret_stats = ret_stats.update(returns)
                    scaled = reward / jnp.sqrt(ret_stats.var + 1e-8)
            else:
                scaled = reward
            returns = jnp.where(jnp.logical_or(terminated, truncated), 0.0, returns)
            logged = {name: info[name].astype(jnp.float32) for name in INFO_METRICS if name in info}
            tr = Transition(obs=norm_obs, action=action, log_prob=log_prob, value=value, reward=scaled,
                            raw_reward=reward, terminated=terminated, truncated=truncated,
                            next_obs=obs_stats.normalize(final_obs) if cfg.normalize_obs else final_obs,
                            info=logged)
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
        metrics["lr"] = learning_rate(cfg, hp)((runner.update + 1) * steps)
        metrics["reward"] = traj.raw_reward.mean()
        metrics["episodes"] = jnp.logical_or(traj.terminated, traj.truncated).sum().astype(jnp.float32)
        metrics.update({INFO_METRICS[name]: value.mean() for name, value in traj.info.items()})
        metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
        runner = runner.replace(params=params, opt_state=opt_state, key=key, update=runner.update + 1)
        return runner, metrics

    def run(self, runner: RunnerState, hp: HyperParams, num_updates: int) -> tuple[RunnerState, dict]:
        """``num_updates`` (static) updates in one scan; metrics have shape (num_updates,)."""
        return jax.lax.scan(lambda r, _: self.update(r, hp), runner, None, length=num_updates)

    def train(self, key: jax.Array, hp: HyperParams | None = None) -> tuple[RunnerState, dict]:
        """The whole run: ``init`` then ``config.num_updates`` updates."""
        hp = self.default_hparams() if hp is None else hp
        return self.run(self.init(key, hp), hp, self.config.num_updates)

    def policy(self, runner: Any, deterministic: bool = True,
               layout: Any = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """``policy_fn(key, obs (..., obs_dim)) -> action`` of a trained runner state, in the
        environment's action space.

        Observations are normalised with the run's final statistics; the action is the mode
        (``deterministic``: the most probable level, or the Beta mean) or a sample. ``runner`` needs
        only ``params`` and ``obs_stats``. ``layout``: the observation's
        :class:`~jaxsplit.envs.spaces.SetLayout` when it has other item counts than the training one
        (another number of devices or slots; the set network's parameters do not depend on them).
        """
        net, cfg, params, stats = self.network, self.config, runner.params, runner.obs_stats
        if layout is not None and layout != self.layout:
            if self.layout is None:
                raise ValueError("this policy reads a plain observation vector; it has no set layout to change")
            mean, var = spaces.transfer_stats(stats.mean, stats.var, self.layout, layout)
            stats = stats.replace(mean=mean, var=var)
            net = net.clone(layout=layout)

        def policy_fn(key: jax.Array, obs: jax.Array) -> jax.Array:
            obs = obs.astype(jnp.float32)
            dist, _ = net.apply(params, stats.normalize(obs) if cfg.normalize_obs else obs)
            return self.env_action(self.mode(dist) if deterministic else self.sample(key, dist))

        return policy_fn


def make_train(config: PPOConfig, env: Any, env_params: Any) -> Callable[..., tuple[RunnerState, dict[str, jax.Array]]]:
    """``train(key, hparams=None) -> (runner_state, metrics)``, ready for ``jax.jit`` and ``jax.vmap``.

    ``key`` is a raw (2,) uint32 key (``jax.random.PRNGKey``); ``metrics[name]`` has shape
    (config.num_updates,). ``train.trainer`` is the underlying :class:`Trainer`.
    """
    trainer = Trainer(config, env, env_params)

    def train(key: jax.Array, hparams: HyperParams | None = None):
        return trainer.train(key, hparams)

    train.trainer = trainer  # type: ignore[attr-defined]
    return train
