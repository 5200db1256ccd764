"""A plain numpy twin of the allocation environment (MODEL.md section 6), one environment at a time.

Written independently of the JAX environment, as simply as possible: absolute clock, a Python list
of reservations, every layer of the request (no de-duplication) in float64, and the closed-form
split of :mod:`jaxsplit.solvers` re-implemented with numpy over the layers of a request. It is the
reference of the step-by-step agreement test and the peer of the throughput benchmark.

The random draws are separate from the dynamics: :meth:`NumpyAllocationEnv.reset` and
:meth:`NumpyAllocationEnv.step` take the cluster, load, gaps and models as arguments (so a test can
feed it the JAX environment's draws), and :meth:`NumpyAllocationEnv.reset_random` /
:meth:`NumpyAllocationEnv.step_random` draw them with a numpy Generator.

Presence: ``reset`` takes the episode's pool (the devices taking part; default all) and ``step`` the
devices present at the next arrival (default: those present now), both as drawn elsewhere. An absent
device gets share 0, E_ref is the latency on the pool alone, and an absent device's observation
features are 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxsplit.models import resolve as resolve_model

SHARE_TOLERANCE = 1e-5
OBS_CLIP = 10.0
CORRECTION_ROUNDS = 3


class ModelTable:
    """Every layer of one model (a spec of :mod:`jaxsplit.models`) as float64 columns of shape (L,)."""

    def __init__(self, name: str, input_size: tuple[int, int], q: float):
        layers = resolve_model(name, input_size)
        col = lambda f: np.array([float(f(l)) for l in layers])
        self.in_height = col(lambda l: l.in_height)
        self.out_height = col(lambda l: l.out_height)
        self.stride = col(lambda l: l.stride[0])
        self.pad_top = col(lambda l: l.padding[0])
        self.keff = col(lambda l: l.kernel_extent[0])
        self.in_bytes = col(lambda l: l.in_width * l.in_channels * q)
        self.out_bytes = col(lambda l: l.out_width * l.out_channels * q)
        self.phi = col(lambda l: l.row_work)
        self.work = float(np.sum(self.phi * self.out_height))


def water_fill(alpha: np.ndarray, beta: np.ndarray, active: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Continuous equal-finish rows for each layer; arrays (L, N), total (L,)."""
    n = np.zeros_like(alpha)
    for l in range(alpha.shape[0]):
        order = [i for i in np.argsort(alpha[l], kind="stable") if active[i]]
        best, s_aw, s_w = math.inf, 0.0, 0.0
        for i in order:
            s_aw += alpha[l, i] / beta[l, i]
            s_w += 1.0 / beta[l, i]
            best = min(best, (total[l] + s_aw) / s_w)
        for i in order:
            n[l, i] = max(0.0, (best - alpha[l, i]) / beta[l, i])
    return n


def exact_times(t: ModelTable, rows: np.ndarray, msg, spb, spf) -> np.ndarray:
    """Exact T_i (MODEL.md section 3) of every layer and device; rows (L, N) -> seconds (L, N)."""
    start = np.cumsum(rows, axis=1) - rows
    lo = np.maximum(0.0, start * t.stride[:, None] - t.pad_top[:, None])
    hi = np.minimum(t.in_height[:, None], (start + rows - 1) * t.stride[:, None] - t.pad_top[:, None] + t.keff[:, None])
    read = np.maximum(hi - lo, 0.0)
    time = msg + (read * t.in_bytes[:, None] + rows * t.out_bytes[:, None]) * spb + rows * t.phi[:, None] * spf
    return np.where(rows > 0, time, 0.0)


def closed_form_rows(t: ModelTable, flops, bandwidth, latency, share) -> tuple[np.ndarray, tuple]:
    """Refined closed-form split (solvers.closed_form_split) of every layer; int rows (L, N)."""
    active = share > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        spf = np.where(active, 1.0 / np.where(active, share * flops, 1.0), 0.0)
        spb = np.where(active & np.isfinite(bandwidth), 1.0 / np.where(active & np.isfinite(bandwidth), share * bandwidth, 1.0), 0.0)
    msg = 2.0 * latency
    in_row = t.in_bytes[:, None] * spb
    beta = t.stride[:, None] * in_row + t.out_bytes[:, None] * spb + t.phi[:, None] * spf
    alpha = msg + np.maximum(t.keff - t.stride, 0.0)[:, None] * in_row
    total = t.out_height
    n = water_fill(alpha, beta, active, total)
    plain = _round_rows(n, alpha, beta, active, total)
    num_layers, num = alpha.shape
    idx = np.arange(num)
    pos = n > 0
    first = idx[None, :] == np.argmax(pos, axis=1)[:, None]
    last = idx[None, :] == (num - 1 - np.argmax(pos[:, ::-1], axis=1))[:, None]
    halo = (t.keff - t.stride)[:, None]
    h_end = np.minimum(t.in_height, (total - 1) * t.stride - t.pad_top + t.keff)[:, None]
    extra = np.where(first, halo - t.pad_top[:, None], halo)
    extra = np.where(last, h_end + t.pad_top[:, None] - (total * t.stride)[:, None], extra)
    extra = np.where(first & last, h_end - (total * t.stride)[:, None], extra)
    alpha_b = msg + extra * in_row
    n = water_fill(alpha_b, beta, active, total)
    rows = _round_rows(n, alpha_b, beta, active, total)
    # bounded correction: move one row from the slowest device while the exact latency falls
    times = exact_times(t, rows, msg, spb, spf)
    for l in range(num_layers):
        best = times[l].max()
        for _ in range(CORRECTION_ROUNDS):
            slow = int(np.argmax(times[l]))
            cost = np.where(active & (idx != slow), alpha_b[l] + beta[l] * (rows[l] + 1), np.inf)
            fast = int(np.argmin(cost))
            if rows[l, slow] > 0 and np.isfinite(cost[fast]):
                cand = rows[l].copy()
                cand[slow] -= 1
                cand[fast] += 1
                ct = exact_times(_one(t, l), cand[None], msg, spb, spf)[0]
                if ct.max() < best:
                    rows[l], times[l], best = cand, ct, ct.max()
    # never worse than the plain rule
    plain_worst = exact_times(t, plain, msg, spb, spf).max(axis=1)
    keep_plain = times.max(axis=1) > plain_worst
    rows = np.where(keep_plain[:, None], plain, rows)
    return rows, (msg, spb, spf)


def _round_rows(n, alpha, beta, active, total) -> np.ndarray:
    """Floor, then the remaining rows one by one to the smallest alpha + beta (n + 1); (L, N)."""
    rows = np.where(active, np.floor(n), 0.0)
    for l in range(rows.shape[0]):
        remaining = total[l] - rows[l].sum()
        for _ in range(rows.shape[1]):
            if remaining > 0:
                cost = np.where(active, alpha[l] + beta[l] * (rows[l] + 1), np.inf)
                rows[l, int(np.argmin(cost))] += 1
            remaining -= 1
        ends = np.minimum(np.cumsum(rows[l]), total[l])
        rows[l] = np.diff(np.concatenate([[0.0], ends]))
        rows[l, np.flatnonzero(active)[-1]] += total[l] - rows[l].sum()
    return rows


def _one(t: ModelTable, l: int) -> ModelTable:
    one = ModelTable.__new__(ModelTable)
    for k, v in vars(t).items():
        setattr(one, k, v[l:l + 1] if isinstance(v, np.ndarray) else v)
    return one


def equal_rows(t: ModelTable, share: np.ndarray) -> np.ndarray:
    """Equal rows over devices with a positive share, the remainder to the first ones; (L, N)."""
    active = share > 0
    k = max(int(active.sum()), 1)
    rank = np.cumsum(active) - 1
    tot = t.out_height.astype(int)[:, None]
    return np.where(active[None, :], tot // k + (rank[None, :] < tot % k), 0).astype(float)


def request_time(t: ModelTable, cluster, share, split: str) -> float:
    """Execution time E (s) of one request: sum over layers of max_i T_i."""
    flops, bandwidth, latency = cluster
    if split == "equal":
        active = share > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            spf = np.where(active, 1.0 / np.where(active, share * flops, 1.0), 0.0)
            spb = np.where(active & np.isfinite(bandwidth), 1.0 / np.where(active & np.isfinite(bandwidth), share * bandwidth, 1.0), 0.0)
        rows, msg = equal_rows(t, share), 2.0 * latency
    else:
        rows, (msg, spb, spf) = closed_form_rows(t, flops, bandwidth, latency, share)
    return float(exact_times(t, rows, msg, spb, spf).max(axis=1).sum())


class NumpyAllocationEnv:
    """The environment's dynamics in numpy (float64), one environment; see the module docstring."""

    def __init__(self, num_devices: int = 4, slots: int = 16,
                 models: Sequence[str] = ("vgg16", "resnet18", "mobilenet_v2", "alexnet"),
                 input_size: tuple[int, int] = (224, 224), requests: int = 256, split: str = "closed_form",
                 bytes_per_element: float = 4.0, util_weight: float = 0.2, invalid_penalty: float = 1.0,
                 min_share: float = 0.05, mix: Sequence[float] | None = None, reward_scale: str = "model",
                 observation: str = "summary"):
        self.num_devices, self.slots, self.requests, self.split = num_devices, slots, requests, split
        self.models = list(models)
        self.tables = [ModelTable(m, input_size, bytes_per_element) for m in self.models]
        self.util_weight, self.invalid_penalty, self.min_share = util_weight, invalid_penalty, min_share
        self.reward_scale = reward_scale
        self.observation_kind = observation
        mix = np.ones(len(self.models)) if mix is None else np.asarray(mix, float)
        self.mix = mix / mix.sum()

    # -- episode
    def reset(self, cluster, load: float, model: int, pool=None) -> np.ndarray:
        """Start an episode on ``cluster`` = (flops, bandwidth, latency) at load rho with the devices
        ``pool`` ((N,) bool, default all) taking part; returns obs."""
        self.cluster = tuple(np.asarray(c, float) for c in cluster)
        self.load = float(load)
        self.pool = np.ones(self.num_devices, bool) if pool is None else np.array(pool, bool).reshape(self.num_devices)
        self.present = self.pool.copy()
        # the reference: every device of the pool at share 1, the others left out
        self.e_ref = np.array([request_time(t, self.cluster, self.pool.astype(float), self.split) for t in self.tables])
        self.e_mean = float(np.sum(self.mix * self.e_ref))
        self.rate = self.load / self.e_mean
        self.now = 0.0
        self.last_start = 0.0
        self.reservations: list[tuple[float, float, np.ndarray]] = []  # (start, end, share)
        self.model = int(model)
        self.count = 0
        return self.observation()

    def usage(self, when: float) -> tuple[np.ndarray, int]:
        """Shares held at time ``when`` and the number of reservations holding a slot then."""
        used, held = np.zeros(self.num_devices), 0
        for _, end, share in self.reservations:
            if end > when:
                used += share
                held += 1
        return used, held

    def observation(self) -> np.ndarray:
        """Same features as the JAX environment (see AllocationEnv.observation)."""
        base = max(self.now, self.last_start)
        used, _ = self.usage(base)
        release = np.zeros(self.num_devices)
        for i in range(self.num_devices):
            ends = [end - self.now for _, end, share in self.reservations if end > base and share[i] > 0]
            release[i] = min(ends) if ends else 0.0
        f, b, tau = self.cluster
        k = self.model
        onehot = np.zeros(len(self.models))
        onehot[k] = 1.0
        per_device = [np.clip(1.0 - used, 0.0, 1.0), np.log1p(release / self.e_mean), f / 1e11, 10.0 * 1e6 / b,
                      tau / 5e-3]
        per_device = [np.where(self.present, x, 0.0) for x in per_device]  # an absent device shows nothing
        feats = np.concatenate(per_device + [
            [np.log1p((base - self.now) / self.e_mean)], onehot,
            [np.log1p(self.e_ref[k] / self.e_mean)], [np.log1p(self.tables[k].work / 1e9) / 4.0], [self.load]])
        if self.observation_kind == "table":
            held = sorted((r for r in self.reservations if r[1] > base), key=lambda r: -(r[1] - base))
            rows = np.zeros((self.slots, self.num_devices + 1))
            for j, (_, end, share) in enumerate(held):
                rows[j, 0] = np.log1p((end - base) / self.e_mean)
                rows[j, 1:] = share
            feats = np.concatenate([feats, rows.reshape(-1)])
        return np.clip(feats, 0.0, OBS_CLIP)

    def step(self, action, gap: float, next_model: int, next_present=None) -> tuple[np.ndarray, float, dict]:
        """Serve the present request with ``action`` and move to the next arrival ``gap`` s later, where
        the devices ``next_present`` ((N,) bool, default those present now) are there."""
        a = np.array(action, float).reshape(self.num_devices)
        a[~np.isfinite(a)] = 0.0
        a[~self.present] = 0.0  # nothing new on an absent device
        a = np.clip(a, 0.0, 1.0)
        a[a < self.min_share] = 0.0
        invalid = not np.any(a > 0)
        if invalid:
            a[0] = self.min_share
        t = self.tables[self.model]
        e = request_time(t, self.cluster, a, self.split)
        base = max(self.now, self.last_start)
        candidates = sorted({base} | {end for _, end, _ in self.reservations if end > base})
        start = None
        for c in candidates:
            used, held = self.usage(c)
            if np.all(used + a <= 1.0 + SHARE_TOLERANCE) and held < self.slots:
                start = c
                break
        assert start is not None
        self.reservations = [r for r in self.reservations if r[1] > start]  # released ones are gone
        self.reservations.append((start, start + e, a.copy()))
        self.last_start = start
        wait = start - self.now
        latency = wait + e
        util = min(max(t.work / (np.sum(a * self.cluster[0]) * e), 0.0), 1.0)
        scale = self.e_ref[self.model] if self.reward_scale == "model" else self.e_mean
        reward = -latency / scale + self.util_weight * util - self.invalid_penalty * invalid
        info = dict(latency=latency, wait=wait, exec_time=e, utilization=util, model=self.model,
                    invalid=invalid, share=a, capacity=float(np.sum(self.cluster[0][self.present])),
                    devices=int(self.present.sum()))
        self.now += gap
        self.model = int(next_model)
        if next_present is not None:
            self.present = np.array(next_present, bool).reshape(self.num_devices)
        self.count += 1
        return self.observation(), reward, info

    # -- with its own random draws (benchmark peer)
    def draw_cluster(self, rng: np.random.Generator, flops=(5e9, 100e9), bandwidth=(100e6 / 8, 2e9 / 8),
                     latency=(0.2e-3, 5e-3)):
        n = self.num_devices
        f = np.exp(rng.uniform(np.log(flops[0]), np.log(flops[1]), n))
        b = np.exp(rng.uniform(np.log(bandwidth[0]), np.log(bandwidth[1]), n))
        tau = rng.uniform(latency[0], latency[1], n)
        b[0], tau[0] = np.inf, 0.0
        return f, b, tau

    def reset_random(self, rng: np.random.Generator, load_range=(0.2, 1.5)) -> np.ndarray:
        return self.reset(self.draw_cluster(rng), rng.uniform(*load_range), rng.choice(len(self.models), p=self.mix))

    def step_random(self, action, rng: np.random.Generator) -> tuple[np.ndarray, float, bool, dict]:
        obs, reward, info = self.step(action, rng.exponential() / self.rate, rng.choice(len(self.models), p=self.mix))
        truncated = self.count >= self.requests
        if truncated:
            info["final_observation"] = obs
            obs = self.reset_random(rng)
        return obs, reward, truncated, info
