"""Flax actor-critic for share allocation: a Beta policy head and a value head.

The actor and the critic are separate MLPs (tanh, orthogonal initialisation, as is usual for PPO on
continuous control). The actor returns the Beta concentrations ``alpha, beta = 1 + softplus(.)``
(each of shape (..., N), >= 1), the critic a value of shape (...,).
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
      init_concentration: alpha = beta of every share at initialisation (> 1): the initial policy
        has mean share 1/2 and standard deviation 1 / (2 sqrt(2 c + 1)); larger values start closer
        to "half of every device" (the default 1 + log 2 is the plain zero-bias initialisation).
    """

    num_devices: int
    hidden: Sequence[int] = (64, 64)
    init_concentration: float = 1.0 + float(np.log(2.0))

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns ``(alpha (..., N), beta (..., N), value (...,))``."""
        init = nn.initializers.orthogonal
        x = obs
        for width in self.hidden:
            x = nn.tanh(nn.Dense(width, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(x))
        bias = float(np.log(np.expm1(self.init_concentration - 1.0)))  # softplus(bias) + 1 = c
        logits = nn.Dense(2 * self.num_devices, kernel_init=init(0.01), bias_init=nn.initializers.constant(bias))(x)
        alpha = 1.0 + nn.softplus(logits[..., : self.num_devices])
        beta = 1.0 + nn.softplus(logits[..., self.num_devices:])

        v = obs
        for width in self.hidden:
            v = nn.tanh(nn.Dense(width, kernel_init=init(np.sqrt(2)), bias_init=nn.initializers.zeros)(v))
        value = nn.Dense(1, kernel_init=init(1.0), bias_init=nn.initializers.zeros)(v)[..., 0]
        return alpha, beta, value
