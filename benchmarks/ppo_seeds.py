"""Each PPO seed against the best baseline, from the JSON that benchmarks/ppo_results.py saved.

For every configuration (ppo_results.json: the defaults; ppo_results_long.json: twice the steps, 2
epochs), setting and load: the best baseline (least mean latency, as the section's own comparison
picks it) and each seed's mean latency relative to it, in seed order, with the range. Reads only the
JSON files (seconds); records the section ``ppo-seeds`` of benchmarks/RESULTS.md.

    python benchmarks/ppo_seeds.py
"""

from __future__ import annotations

import json
from pathlib import Path

import _results

HERE = Path(__file__).resolve().parent
FILES = {"defaults (24 M steps, 4 epochs)": "ppo_results.json", "long (48 M steps, 2 epochs)": "ppo_results_long.json"}


def seed_rows(data: dict) -> list[tuple[str, str, str, list[float]]]:
    """(setting, load, best baseline, each seed's change in %) for every setting and load."""
    rows = []
    for setting, part in data.items():
        for load, ppo in part["ppo"].items():
            best = min(part["baselines"], key=lambda n: part["baselines"][n][load]["mean"])
            ref = part["baselines"][best][load]["mean"]
            rows.append((setting, load, best, [100.0 * (s / ref - 1.0) for s in ppo["seeds"]]))
    return rows


def body() -> str:
    lines = ["### Each PPO seed against the best baseline", "",
             f"Command: `python benchmarks/ppo_seeds.py` (reads {', '.join(FILES.values())})  ",
             f"Machine: the machine of the sections above (AMD EPYC, 2 cores); this script only reads their JSON  ",
             f"Revision: {_results.git_revision()}", "",
             "| configuration | setting | rho | best baseline | each seed vs best (seed order) | range |",
             "|---|---|---:|---|---|---|"]
    for label, name in FILES.items():
        for setting, load, best, changes in seed_rows(json.loads((HERE / name).read_text())):
            each = ", ".join(f"{c:+.1f}%" for c in changes)
            lo, hi = min(changes), max(changes)
            lines.append(f"| {label} | {setting} | {load} | {best} | {each} | {lo:+.1f}% to {hi:+.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    _results.record("ppo-seeds", body())
    print(body())
