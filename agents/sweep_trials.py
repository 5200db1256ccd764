"""Asking and telling a sweep's trials: Optuna's samplers, the next batch of a worker within the study's
budget, the heartbeats of the trials it trains, and each trial's objective told back to the study."""

from __future__ import annotations

import math
import threading
import time
import warnings
from typing import Any, Sequence

import jax
import numpy as np

from .pbt import member_values
from .space import Dimension
from .sweep_settings import SweepSettings


def make_sampler(name: str, dims: Sequence[Dimension], seed: int) -> Any:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    lists = [d for d in dims if d.choices is None]
    if lists:
        raise ValueError(f"--sampler grid: dimension {lists[0].name} is a range; give it as a list NAME=v1,v2,...")
    return _Grid({d.name: list(d.choices) for d in dims}, seed=seed)


def _grid_class() -> type:
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is used up (that call is for
        ``study.optimize``; a sweep counts its trials itself and never asks for more than the grid)."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid


def _Grid(*args: Any, **kwargs: Any) -> Any:
    return _grid_class()(*args, **kwargs)


def quiet_optuna() -> None:
    """Silence the warnings of Optuna that a sweep's worker expects."""
    import optuna

    # heartbeats are recorded by this worker itself (ask and tell), which Optuna's warnings do not foresee
    warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class SweepTrials:
    """One worker's trials of the study: which to train next, their heartbeats, and their objectives.

    ``store`` is the worker's :class:`~jaxsplit.agents.sweep_storage.SweepStore`, whose ``storage`` (the
    Optuna RDB storage, once the study is open) records the heartbeats."""

    def __init__(self, settings: SweepSettings, dims: Sequence[Dimension], store: Any, worker: str):
        self.settings, self.dims, self.store, self.worker = settings, tuple(dims), store, worker

    def distributions(self) -> dict[str, Any]:
        return {d.name: d.distribution() for d in self.dims}

    def member_rows(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        """One row per member: the trial's parameters and a seed (padded to the population size)."""
        rows = [dict(t.params, seed=self.settings.seed + s) for t in batch for s in range(self.settings.seeds)]
        return rows + [dict(rows[0]) for _ in range(self.settings.population - len(rows))]

    # ----- asking --------------------------------------------------------------------------------

    def next_batch(self, study: Any) -> list[Any] | None:
        """The next batch of this worker (waiting while the rest of the budget runs elsewhere), or None
        when the study holds ``trials`` complete trials."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        while True:
            fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            if sum(t.state == TrialState.COMPLETE for t in trials) >= self.settings.trials:
                return None
            active = sum(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if active >= self.settings.trials and not waiting:
                time.sleep(min(self.settings.heartbeat, 5))  # the rest runs elsewhere: wait for it or for it to go stale
                continue
            batch = self.ask_batch(study)
            if batch:
                return batch

    def ask_batch(self, study: Any) -> list[Any]:
        """Up to trials_per_batch new trials, never beyond the study's budget of ``trials``."""
        import optuna
        from optuna.trial import TrialState

        active = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        batch = []
        for _ in range(self.settings.trials_per_batch):
            count = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                                  TrialState.WAITING)))
            study.sampler = make_sampler(self.settings.sampler, self.dims, self.settings.seed + count)
            trial = study.ask(self.distributions())
            self.beat([trial])
            rank = sum(1 for t in study.get_trials(deepcopy=False, states=active) if t.number < trial.number)
            if rank >= self.settings.trials:  # another worker took the last places first
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            trial.set_user_attr("worker", self.worker)
            batch.append(trial)
        return batch

    # ----- heartbeats ----------------------------------------------------------------------------

    def beat(self, trials: Sequence[Any]) -> None:
        for t in trials:
            self.store.storage.record_heartbeat(t._trial_id)

    def beat_loop(self, batch: Sequence[Any], stop: threading.Event) -> None:
        """A heartbeat for every trial of ``batch`` each ``heartbeat`` seconds, until ``stop`` is set."""
        while not stop.wait(self.settings.heartbeat):
            try:
                self.beat(batch)
            except Exception:  # a lost connection: the trials go stale and are rerun elsewhere
                pass

    # ----- telling -------------------------------------------------------------------------------

    def per_load(self, results: dict[str, np.ndarray], i: int) -> list[dict[str, Any]]:
        """Trial ``i``'s latency at each load: the mean over its seeds, with its 95% half-width."""
        k = self.settings.seeds
        members = slice(i * k, (i + 1) * k)
        lat = results["mean_latency_s"][members]  # (K, loads, episodes)
        out = []
        for j, load in enumerate(self.settings.eval_loads):
            means = lat[:, j].mean(-1)
            spread = means if k > 1 else lat[0, j]
            ci = float(1.96 * np.std(spread, ddof=1) / np.sqrt(len(spread))) if len(spread) > 1 else float("nan")
            out.append({"load": float(load), "mean_latency_s": float(means.mean()), "mean_latency_s_ci": ci,
                        "p99_latency_s": float(results["p99_latency_s"][members, j].mean())})
        return out

    def tell(self, study: Any, batch: Sequence[Any], rows: list[dict[str, Any]], hparams: Any,
             lineage: list[list[int]], results: dict[str, np.ndarray], wall: float, steps: int
             ) -> tuple[Any, int] | None:
        """Record and tell every trial of the batch (``steps``: one member's environment steps); the
        study's best trial and its index in ``batch`` when it is one of them, else None."""
        import optuna

        k = self.settings.seeds
        finals = member_values(jax.device_get(hparams), self.dims)
        for i, trial in enumerate(batch):
            per_load = self.per_load(results, i)
            objective = float(np.mean([r["mean_latency_s"] for r in per_load]))
            trial.set_user_attr("per_load", per_load)
            trial.set_user_attr("seeds", [rows[m]["seed"] for m in range(i * k, (i + 1) * k)])
            trial.set_user_attr("env_steps", steps * k)
            trial.set_user_attr("population_wall_s", round(wall, 3))
            trial.set_user_attr("population", len(rows))
            if self.settings.schedule == "pbt":
                trial.set_user_attr("final_params", finals[i * k])
                trial.set_user_attr("lineage", [gen[i] for gen in lineage])
            if math.isfinite(objective):
                study.tell(trial, objective)
            else:  # a diverged member: failed, never a result
                trial.set_user_attr("diverged", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        best = study.best_trial if any(t.state == optuna.trial.TrialState.COMPLETE for t in
                                       study.get_trials(deepcopy=False)) else None
        numbers = [t.number for t in batch]
        if best is not None and best.number in numbers:
            return best, numbers.index(best.number)
        return None
