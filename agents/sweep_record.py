"""A sweep's record: one record per trial (``trials.jsonl``), the baselines on the sweep's evaluation
episodes (``baselines.json``), the leaderboard and plots (:mod:`jaxsplit.agents.sweep_report`), and the
progress reported after each batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxsplit import atomic
from jaxsplit.envs import EnvSpec
from jaxsplit.envs.evaluation import evaluate

from .space import Dimension
from .sweep_settings import SweepSettings


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One record per trial of the study (surplus places excluded), in trial order."""
    records = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        attrs = t.user_attrs
        rec = {"number": t.number, "state": t.state.name.lower(), "params": t.params, "seeds": attrs.get("seeds"),
               "objective": t.value, "per_load": attrs.get("per_load"), "env_steps": attrs.get("env_steps"),
               "wall_s": attrs.get("population_wall_s"), "population": attrs.get("population"),
               "worker": attrs.get("worker")}
        for name in ("final_params", "lineage", "retry_of", "interrupted", "diverged"):
            if name in attrs:
                rec[name] = attrs[name]
        records.append(rec)
    return records


class SweepRecord:
    """The files of the sweep folder ``out`` that describe the study (any worker may write them; each
    file is replaced atomically)."""

    def __init__(self, out: Path, spec: EnvSpec, settings: SweepSettings, dims: Sequence[Dimension],
                 baseline_names: Sequence[str], study_name: str):
        self.out, self.spec, self.settings, self.dims = out, spec, settings, tuple(dims)
        self.baseline_names, self.study_name = tuple(baseline_names), study_name

    def baselines(self) -> list[dict[str, Any]]:
        """Every baseline on the sweep's evaluation episodes (cached in baselines.json)."""
        path = self.out / "baselines.json"
        key = {"loads": list(self.settings.eval_loads), "episodes": self.settings.eval_episodes, "requests": self.settings.eval_requests,
               "warmup": self.settings.eval_warmup, "seed": self.settings.eval_seed, "env": self.spec.to_json(),
               "policies": list(self.baseline_names)}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                if saved.get("key") == key:
                    return saved["rows"]
            except (OSError, json.JSONDecodeError, AttributeError):
                pass
        env, params = self.spec.base()
        rows = []
        for name in self.baseline_names:
            rows += evaluate(name, env, params, protocol=self.settings.protocol())
        atomic.write_text(path, atomic.dumps({"key": key, "rows": rows}, indent=1) + "\n")
        return rows

    def write_files(self, study: Any, baselines: list[dict[str, Any]]) -> None:
        """trials.jsonl, the leaderboard and the plots, from the study as it is now."""
        from . import sweep_report

        records = trial_records(study)
        atomic.write_text(self.out / "trials.jsonl", "".join(atomic.dumps(r) + "\n" for r in records))
        sweep_report.write(self.out, study, records, baselines, self.dims, self.settings, self.study_name)

    def report(self, study: Any, on_progress: Callable[[dict[str, Any]], None] | None) -> None:
        """A ``batch`` progress event: the complete trials so far and the best objective."""
        from optuna.trial import TrialState

        if on_progress is None:
            return
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = min((t.value for t in done), default=None)
        on_progress({"event": "batch", "complete": len(done), "trials": self.settings.trials, "best": best})
