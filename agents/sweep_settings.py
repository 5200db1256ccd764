"""A sweep's search and scoring settings (``jaxsplit sweep``'s ``--trials``, ``--sampler``, ``--eval-*``, ...)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from jaxsplit.contract import check_seed
from jaxsplit.envs.evaluation import Protocol

SAMPLERS = ("tpe", "random", "cmaes", "grid")
SCHEDULES = ("none", "pbt")


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep searches and scores (the fixed PPO and environment settings live apart)."""

    trials: int = 32
    """complete trials wanted in the study, all workers together"""
    population: int = 8
    """members trained at once (a multiple of --seeds and of the local device count)"""
    seeds: int = 1
    """seeds per trial (its members); the objective is their mean"""
    sampler: Literal["tpe", "random", "cmaes", "grid"] = "tpe"
    """how Optuna proposes trials (grid: every dimension a list)"""
    schedule: Literal["none", "pbt"] = "none"
    """none: each trial trains with its own settings; pbt: population-based training within each population"""
    eval_loads: tuple[float, ...] = dataclasses.field(default_factory=lambda: Protocol().loads)
    """offered loads of the objective (mean latency over them)"""
    eval_episodes: int = dataclasses.field(default_factory=lambda: Protocol().episodes)
    """evaluation episodes per load and member"""
    eval_requests: int = dataclasses.field(default_factory=lambda: Protocol().requests)
    """requests per evaluation episode"""
    eval_warmup: float = dataclasses.field(default_factory=lambda: Protocol().warmup)
    """fraction of each evaluation episode's first requests left out of the metrics"""
    eval_seed: int = dataclasses.field(default_factory=lambda: Protocol().seed)
    """seed of the evaluation episodes (the same for every trial and baseline)"""
    seed: int = 0
    """seed of each trial's first member (the others: seed + 1, ...) and of the sampler"""
    chunk: int = 10
    """updates per jitted chunk: progress, checkpoints, and the pbt exploit interval"""
    pbt_fraction: float = 0.25
    """pbt: fraction of the members replaced by copies of the best at each exploit"""
    pbt_perturb: float = 1.25
    """pbt: a copied range setting is multiplied by this or by its inverse"""
    pbt_resample: float = 0.25
    """pbt: probability that a copied list setting draws a new value"""
    heartbeat: int = 10
    """seconds between a worker's heartbeats; a trial 3 beats late is failed and queued again"""

    def validate(self) -> "SweepSettings":
        for name in ("trials", "population", "seeds", "eval_episodes", "chunk", "heartbeat"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be a positive integer, got {value!r}")
        check_seed(self.seed, "seed", 0, 2**32 - 1 - self.trials)  # Optuna's samplers take seed + trial count
        check_seed(self.eval_seed, "eval_seed")
        if self.eval_requests < 2:
            raise ValueError(f"--eval-requests: must be >= 2, got {self.eval_requests}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler: unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule: unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.population % self.seeds:
            raise ValueError(f"--population {self.population} must be a multiple of --seeds {self.seeds}")
        if not self.eval_loads or not all(math.isfinite(l) and l > 0 for l in self.eval_loads):
            raise ValueError(f"--eval-loads: every load must be positive, got {self.eval_loads}")
        if not 0 <= self.eval_warmup < 1:
            raise ValueError(f"--eval-warmup: must be in [0, 1), got {self.eval_warmup}")
        if self.schedule == "pbt":
            if self.seeds != 1:
                raise ValueError("--seeds: pbt trains each member as its own trial; use --seeds 1")
            if not 0 < self.pbt_fraction <= 0.5:
                raise ValueError(f"--pbt-fraction: must be in (0, 0.5], got {self.pbt_fraction}")
            if self.population < 2 * max(1, int(self.pbt_fraction * self.population)):
                raise ValueError(f"--population {self.population}: too small for pbt (need at least 2 members)")
            if not (math.isfinite(self.pbt_perturb) and self.pbt_perturb > 1):
                raise ValueError(f"--pbt-perturb: must be > 1, got {self.pbt_perturb}")
            if not 0 <= self.pbt_resample <= 1:
                raise ValueError(f"--pbt-resample: must be in [0, 1], got {self.pbt_resample}")
        return self

    def protocol(self) -> Protocol:
        """The evaluation protocol of the objective and of the baselines (the ``--eval-*`` options)."""
        return Protocol(tuple(float(x) for x in self.eval_loads), self.eval_episodes, self.eval_requests,
                        self.eval_warmup, self.eval_seed)

    @property
    def trials_per_batch(self) -> int:
        return self.population // self.seeds
