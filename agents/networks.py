"""Flax actor-critics for share allocation: a Beta or categorical policy head and a value head.

:class:`ActorCritic` reads a flat observation vector; :class:`SetActorCritic` reads an observation of
sets of items (devices, reservations) and works for any number of them.

The actor and the critic are separate MLPs (tanh, orthogonal initialisation, as is usual for PPO on
continuous control). The actor returns the parameters of the action distribution: the Beta
concentrations ``(alpha, beta)``, ``1 + softplus(.)`` (each of shape (..., N), >= 1), or, with
``levels`` > 0, the categorical logits ``(logits,)`` of shape (..., N, levels + 1); the critic a
value of shape (...,).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class ActorCritic(nn.Module):
    """Actor-critic over observations of shape (..., obs_dim).

    Attributes:
      num_devices: N, the number of shares the actor outputs.
      hidden: widths of the hidden layers of each MLP.
      levels: 0 for the Beta head; L > 0 for a categorical head over L + 1 share levels per output
        (initially uniform).
      init_concentration, init_mean: the initial Beta of every share is alpha = 2 c m, beta = 2 c (1 - m)
        for c = init_concentration and m = init_mean (both concentrations must exceed 1): mean m,
        standard deviation sqrt(m (1 - m) / (2 c + 1)). The defaults (c = 1 + log 2, m = 1/2) are the
        plain zero-bias initialisation.
    """

    num_devices: int
    hidden: Sequence[int] = (64, 64)
    init_concentration: float = 1.0 + float(np.log(2.0))
    init_mean: float = 0.5
    levels: int = 0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """Returns ``((alpha (..., N), beta (..., N)), value (...,))``, or ``((logits (..., N, L + 1),),
        value)`` with ``levels`` = L > 0."""
        init = nn.initializers.orthogonal
        x = obs
        for width in self.hidden:
            x = nn.tanh(nn.Dense(width, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(x))
        if self.levels > 0:
            shape = (self.num_devices, self.levels + 1)
            logits = nn.Dense(shape[0] * shape[1], kernel_init=init(0.01), bias_init=nn.initializers.zeros)(x)
            dist = (logits.reshape(logits.shape[:-1] + shape),)
        else:
            a0 = 2.0 * self.init_concentration * self.init_mean
            b0 = 2.0 * self.init_concentration * (1.0 - self.init_mean)
            bias = np.log(np.expm1(np.array([a0 - 1.0] * self.num_devices + [b0 - 1.0] * self.num_devices)))
            logits = nn.Dense(2 * self.num_devices, kernel_init=init(0.01),
                              bias_init=lambda *_: jnp.asarray(bias, jnp.float32))(x)
            dist = (1.0 + nn.softplus(logits[..., : self.num_devices]), 1.0 + nn.softplus(logits[..., self.num_devices:]))
        v = obs
        for width in self.hidden:
            v = nn.tanh(nn.Dense(width, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(v))
        value = nn.Dense(1, kernel_init=init(1.0), bias_init=nn.initializers.zeros)(v)[..., 0]
        return dist, value


def _mlp(x: jax.Array, widths: Sequence[int], name: str, act=nn.tanh) -> jax.Array:
    init = nn.initializers.orthogonal(np.sqrt(2))
    for i, width in enumerate(widths):
        x = act(nn.Dense(width, kernel_init=init, bias_init=nn.initializers.zeros, name=f"{name}_{i}")(x))
    return x


class SetEncoder(nn.Module):
    """Encodes an observation of sets of items (:class:`jaxsplit.envs.spaces.SetLayout`) into a
    context vector and one embedding per item of every set.

    Each item's columns go through a layer shared by the items of its set (none with
    ``item_hidden`` empty: the item's own features); over the items that are there (mask column 0)
    the embeddings are pooled by their mean, maximum and minimum, with log(1 + count); the pools and
    the global entries go through the trunk MLP. Nothing depends on the order of the items, and an
    absent item changes nothing. Shapes: obs (..., D) -> (context (..., hidden[-1]),
    {name: (..., items, width)}).

    Pooling the items' features themselves (the default) costs about what a plain MLP on the flat
    vector costs; a learned per-item layer multiplies the activations by the number of items, which
    on a CPU made an update several times slower for N = 8 devices and M = 16 slots.
    """

    layout: Any
    hidden: Sequence[int] = (64, 64)
    item_hidden: Sequence[int] = ()

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        glob, sets = self.layout.split(obs)
        pooled, embedded = [glob], {}
        for name, items in sets.items():
            mask = (items[..., 0] > 0.5)[..., None]
            e = _mlp(items, self.item_hidden, f"{name}_item", act=nn.relu) if self.item_hidden else items[..., 1:]
            embedded[name] = e
            count = jnp.sum(mask, axis=-2)
            there = jnp.any(mask, axis=-2)
            mean = jnp.sum(jnp.where(mask, e, 0.0), axis=-2) / jnp.maximum(count, 1)
            peak = jnp.where(there, jnp.max(jnp.where(mask, e, -jnp.inf), axis=-2), 0.0)
            low = jnp.where(there, jnp.min(jnp.where(mask, e, jnp.inf), axis=-2), 0.0)
            pooled += [mean, peak, low, jnp.log1p(count.astype(e.dtype))]
        return _mlp(jnp.concatenate(pooled, axis=-1), self.hidden, "trunk"), embedded


class SetActorCritic(nn.Module):
    """Actor-critic over an observation of sets of items (``layout``), invariant to the order of the
    items and to padding with absent ones, for any number of items present.

    The actor and the critic each have their own :class:`SetEncoder`. A head that is not per item
    (one share, a (cap, floor) pair, a choice among pairs) reads the actor's context; a per-item
    head (``per_item`` names the set, e.g. "devices" for one share per device) reads each item's
    embedding with the context, so that permuting the items permutes the outputs alike. An absent
    item's categorical output is pinned to level 0 (share 0): it adds nothing to the log-probability
    or the entropy.

    Attributes: as :class:`ActorCritic` (``num_devices`` is the number of action entries), plus
    ``layout``, ``per_item`` and ``item_hidden``.
    """

    num_devices: int
    layout: Any = None
    per_item: str | None = None
    hidden: Sequence[int] = (64, 64)
    item_hidden: Sequence[int] = ()
    init_concentration: float = 1.0 + float(np.log(2.0))
    init_mean: float = 0.5
    levels: int = 0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
        init = nn.initializers.orthogonal
        ctx, items = SetEncoder(self.layout, self.hidden, self.item_hidden, name="actor")(obs)
        choices = self.levels + 1 if self.levels > 0 else 2
        if self.per_item is not None:
            e = items[self.per_item]
            x = jnp.concatenate([e, jnp.broadcast_to(ctx[..., None, :], e.shape[:-1] + ctx.shape[-1:])], axis=-1)
            out = nn.Dense(choices, kernel_init=init(0.01), bias_init=nn.initializers.zeros, name="head")(x)
        else:
            out = nn.Dense(self.num_devices * choices, kernel_init=init(0.01), bias_init=nn.initializers.zeros,
                           name="head")(ctx).reshape(ctx.shape[:-1] + (self.num_devices, choices))
        if self.levels > 0:
            logits = out
            if self.per_item is not None:
                _, sets = self.layout.split(obs)
                there = sets[self.per_item][..., 0] > 0.5
                pinned = jnp.where(jnp.arange(choices) == 0, 0.0, -1e9)
                logits = jnp.where(there[..., None], logits, pinned)
            dist = (logits,)
        else:
            a0 = 2.0 * self.init_concentration * self.init_mean
            b0 = 2.0 * self.init_concentration * (1.0 - self.init_mean)
            bias = jnp.asarray(np.log(np.expm1(np.array([a0 - 1.0, b0 - 1.0]))), jnp.float32)
            dist = (1.0 + nn.softplus(out[..., 0] + bias[0]), 1.0 + nn.softplus(out[..., 1] + bias[1]))
        v_ctx, _ = SetEncoder(self.layout, self.hidden, self.item_hidden, name="critic")(obs)
        value = nn.Dense(1, kernel_init=init(1.0), bias_init=nn.initializers.zeros, name="value")(v_ctx)[..., 0]
        return dist, value
