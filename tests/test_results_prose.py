"""benchmarks/RESULTS.md is true to its tables: every figure its prose quotes is in a table or a
generated block of the same section, and every section names its revision and machine."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _results  # noqa: E402

SECTION = """## Ablation
<!-- BEGIN ablation -->
Command: `python benchmarks/x.py`  
Machine: AMD EPYC, 2 cores  
Revision: 0123abc

| rho | equal / closed form |
|---:|---:|
| 0.3 | 3.75x |
| 0.6 | 3.44x |
<!-- END ablation -->

{prose}
"""


def test_results_md_prose_figures_are_in_its_tables():
    assert _results.prose_problems((BENCH / "RESULTS.md").read_text()) == []


def test_a_drifted_figure_is_reported():
    good = SECTION.format(prose="The equal split costs 3.75x at rho = 0.3 and 3.44x at 0.6.")
    assert _results.prose_problems(good) == []
    drifted = SECTION.format(prose="The equal split costs 3.3x at rho = 0.3, and 2.9% more elsewhere.")
    problems = _results.prose_problems(drifted)
    assert len(problems) == 2 and "'3.3x'" in problems[0] and "'2.9%'" in problems[1]
    # a figure from another section does not count
    other = "## Other\n\n| a |\n|---|\n| 3.3x |\n\nRevision: 0123abc, 2 cores\n"
    assert len(_results.prose_problems(drifted + other)) == 2


def test_a_section_without_revision_or_machine_is_reported():
    text = SECTION.format(prose="").replace("Revision: 0123abc", "").replace("2 cores", "")
    problems = _results.prose_problems(text)
    assert any("no revision" in p for p in problems) and any("no machine" in p for p in problems)
    # a hand-written table outside any block needs its own revision and machine
    hand = "## Run time\n\n| machine | time |\n|---|---:|\n| idle | 5 min |\n"
    assert len(_results.prose_problems(hand)) == 2


def test_a_block_may_open_before_its_heading():
    text = "<!-- BEGIN t -->\n## T\n\nRevision: abcdef1, 2 cores\n\n| x |\n|---|\n| 1.25 |\n<!-- END t -->\n\nIt is 1.25.\n"
    assert _results.prose_problems(text) == []
