"""``jaxsplit bench`` (tiny settings) and the command line's persistent compilation cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import pytest

from jaxsplit import bench, cli, compile_cache

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vgg16_cluster.json"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv, field, value", [
    (["nope"], "section", "'nope'"),
    (["split", "--batches", "0"], "batches", "0"),
    (["split", "--batches", "16,-4"], "batches", "-4"),
    (["env", "--devices", "-2"], "devices", "-2"),
    (["env", "--envs", "0"], "envs", "0"),
    (["split", "--solvers", "closed_form,fastest"], "solvers", "'fastest'"),
    (["split", "--solvers", "lp"], "solvers", "'lp'"),
    (["train", "--agents", "x"], "agents", "'x'"),
    (["train", "--updates", "0"], "updates", "0"),
    (["all", "--repeats", "0"], "repeats", "0"),
])
def test_bad_input_is_one_line_with_status_2(capsys, argv, field, value):
    code, out, err = run(capsys, "bench", *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    # the option is named as the field or as the flag (the list options' parser names the flag)
    named = f"field '{field}'" in lines[0] or f"--{field.replace('_', '-')}:" in lines[0]
    assert lines[0].startswith("jaxsplit bench: error: ") and named and value in lines[0]


def test_missing_section_is_one_line(capsys):
    code, _, err = run(capsys, "bench")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_cache_dir_without_a_folder_is_one_line(capsys):
    code, _, err = run(capsys, "bench", "split", "--cache-dir")
    assert code == 2 and "field 'cache-dir'" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ figures
def test_split_json_rows(capsys, compilation_cache):
    code, out, _ = run(capsys, "bench", "split", "--solvers", "closed_form,exact", "--devices", "3",
                       "--batches", "16", "--repeats", "2", "--json", "--no-cache", "--progress")
    assert code == 0
    result = json.loads(out)
    assert result["machine"]["device_count"] == jax.device_count()
    assert result["machine"]["jax"] == jax.__version__
    rows = result["split"]
    assert [(r["solver"], r["batch"]) for r in rows] == [("closed_form", 16), ("exact", 16)]
    for r in rows:
        assert r["devices"] == 3 and r["compile_s"] > 0 and r["spread"] >= 0
        assert r["solves_per_s"] == pytest.approx(r["batch"] / r["best_s"])
    exact = [r for r in rows if r["solver"] == "exact"]
    assert all(r["gap_max"] == 0.0 for r in exact)  # the optimum against itself
    # no split beats the integer optimum (up to float32 rounding of the latency)
    assert all(r["gap_median"] >= -1e-6 and r["gap_max"] >= r["gap_p99"] >= -1e-6 for r in rows)


@pytest.mark.slow
def test_env_json_rows(capsys, compilation_cache):
    code, out, _ = run(capsys, "bench", "env", "--devices", "2", "--envs", "3", "--steps-per-call", "10",
                       "--repeats", "2", "--json", "--no-cache")
    assert code == 0
    rows = json.loads(out)["env"]
    assert [(r["devices"], r["envs"], r["length"]) for r in rows] == [(2, 3, 3)]
    for r in rows:
        assert r["steps_per_s"] == pytest.approx(r["envs"] * r["length"] / r["best_s"]) and r["compile_s"] > 0


def test_timing_best_and_spread():
    timing = bench.Timing(compile_s=1.0, times_s=(0.5, 0.25, 1.0))
    assert timing.best_s == 0.25 and timing.spread == pytest.approx(3.0)
    assert timing.fields(100, "per_s") == dict(compile_s=1.0, best_s=0.25, spread=pytest.approx(3.0), per_s=400.0)


def test_time_compiled_blocks_and_repeats():
    timing, out = bench.time_compiled(lambda x: x * 2, jax.numpy.arange(4.0), repeats=3)
    assert len(timing.times_s) == 3 and all(t > 0 for t in timing.times_s)
    assert out.tolist() == [0.0, 2.0, 4.0, 6.0]


def test_quick_settings_fit_the_row_counts():
    for settings in (bench.quick_settings(), bench.full_settings()):
        assert set(settings) == set(bench.SECTIONS)
        for name, kwargs in settings.items():
            assert bench.row_count(name, kwargs) >= 1


# ------------------------------------------------------------------------------------------ cache
def test_cache_folder_resolution(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert compile_cache.resolve(environ=env) == tmp_path / "jaxsplit" / "jax"
    assert compile_cache.resolve(environ={"JAXSPLIT_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c"
    assert compile_cache.resolve(environ={"JAXSPLIT_CACHE_DIR": "OFF"}) is None
    assert compile_cache.resolve(str(tmp_path / "d"), environ={"JAXSPLIT_CACHE_DIR": "off"}) == tmp_path / "d"
    assert compile_cache.resolve(str(tmp_path / "d"), disabled=True) is None
    assert compile_cache.resolve(environ={"HOME": str(tmp_path)}).parts[-3:] == (".cache", "jaxsplit", "jax")


def test_cache_options_are_taken_out_anywhere():
    assert compile_cache.split_options(["a", "--no-cache", "b"]) == (["a", "b"], None, True)
    assert compile_cache.split_options(["--cache-dir", "/x", "a"]) == (["a"], "/x", False)
    assert compile_cache.split_options(["a", "--cache-dir=/y"]) == (["a"], "/y", False)
    assert compile_cache.split_options(["a", "--", "--no-cache"]) == (["a", "--", "--no-cache"], None, False)


def test_cache_on_while_the_command_runs_and_restored_after(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    with compile_cache.enabled(tmp_path / "jax", "jaxsplit test") as folder:
        assert folder == tmp_path / "jax" and folder.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(folder)
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(folder)  # subprocesses share it
        assert int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]) > 0  # and its lock
        assert jax.config.jax_compilation_cache_max_size > 0  # a limit: JAX locks the folder
    assert (jax.config.jax_compilation_cache_dir, os.environ.get("JAX_COMPILATION_CACHE_DIR")) == before


def test_command_fills_the_cache_and_a_second_run_loads_it(capsys, tmp_path):
    folder = tmp_path / "cache"
    argv = ["bench", "split", "--solvers", "exact", "--devices", "2", "--batches", "8", "--repeats", "1",
            "--json", "--cache-dir", str(folder)]
    code, out, _ = run(capsys, *argv)
    entries = {p.name for p in folder.iterdir() if p.name.endswith("-cache")}
    assert code == 0 and entries, "no program was written to the persistent cache"
    first = json.loads(out)["split"][0]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and {p.name for p in folder.iterdir() if p.name.endswith("-cache")} == entries
    assert json.loads(out)["split"][0]["gap_max"] == first["gap_max"] == 0.0


def test_unwritable_cache_folder_warns_once_and_runs(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run(capsys, "split", str(EXAMPLE), "--json",
                         "--cache-dir", str(blocker / "jax"))
    assert code == 0 and json.loads(out.splitlines()[0])["latency"] > 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(blocker / "jax") in warnings[0] and "not writable" in warnings[0]
    assert not Path(blocker / "jax").exists()
