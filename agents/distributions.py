"""The action distributions of the policy, as small pure functions: Beta for shares in [0, 1]^N, and
a categorical over share levels.

A share vector has one independent Beta(alpha_i, beta_i) per device; log-probabilities and
entropies are summed over the device axis (last). Concentrations are kept >= 1 by the network
(``1 + softplus``), so every density is unimodal and finite on the closed interval after the sample
is clipped to ``[ACTION_EPS, 1 - ACTION_EPS]``.

>>> import jax, jax.numpy as jnp
>>> a, b = jnp.array([2.0, 3.0]), jnp.array([5.0, 1.5])
>>> x = beta_sample(jax.random.key(0), a, b)          # (2,), inside (0, 1)
>>> float(beta_log_prob(x, a, b)) < 10.0
True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, digamma

#: samples are clipped to [ACTION_EPS, 1 - ACTION_EPS] so that log(x) and log(1 - x) stay finite in float32.
ACTION_EPS = 1e-6


def beta_sample(key: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """One sample per entry, clipped to [ACTION_EPS, 1 - ACTION_EPS]; shape of ``alpha``."""
    x = jax.random.beta(key, alpha, beta, shape=alpha.shape, dtype=alpha.dtype)
    return jnp.clip(x, ACTION_EPS, 1.0 - ACTION_EPS)


def beta_log_prob(x: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """Joint log-density of independent Betas, summed over the last (device) axis; shape (...,)."""
    x = jnp.clip(x, ACTION_EPS, 1.0 - ACTION_EPS)
    lp = (alpha - 1.0) * jnp.log(x) + (beta - 1.0) * jnp.log1p(-x) - betaln(alpha, beta)
    return lp.sum(axis=-1)


def beta_entropy(alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """Differential entropy (nats) of independent Betas, summed over the last axis; shape (...,)."""
    total = alpha + beta
    h = (betaln(alpha, beta) - (alpha - 1.0) * digamma(alpha) - (beta - 1.0) * digamma(beta)
         + (total - 2.0) * digamma(total))
    return h.sum(axis=-1)


def beta_mean(alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """The mean alpha / (alpha + beta), used as the deterministic action; shape of ``alpha``."""
    return alpha / (alpha + beta)


# --------------------------------------------------------------------------- categorical
def categorical_sample(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One level index per entry of ``logits`` (..., D, L) as float32 (..., D) (stored like a share)."""
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.float32)


def categorical_log_prob(index: jax.Array, logits: jax.Array) -> jax.Array:
    """Joint log-probability of independent categoricals, summed over D; index (..., D), logits
    (..., D, L); shape (...,)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, index.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    return picked.sum(axis=-1)


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """Entropy (nats) of independent categoricals, summed over D; logits (..., D, L); shape (...,)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -(jnp.exp(logp) * logp).sum(axis=(-2, -1))


def categorical_mode(logits: jax.Array) -> jax.Array:
    """The most probable level index per entry (float32 (..., D)), the deterministic action."""
    return jnp.argmax(logits, axis=-1).astype(jnp.float32)
