"""Flax actor-critic for share allocation: a Beta policy head and a value head.

The actor and the critic are separate MLPs (tanh, orthogonal initialisation, as is usual for PPO on
continuous control). The actor returns the parameters of the action distribution: the Beta
concentrations ``(alpha, beta)``, ``1 + softplus(.)`` (each of shape (..., N), >= 1), or, with
``levels`` > 0, the categorical logits ``(logits,)`` of shape (..., N, levels + 1); the critic a
value of shape (...,).
"""

from __future__ import annotations

from typing import Sequence

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
