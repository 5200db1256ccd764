"""The numeric contract (docs/MODEL.md section 8) at every entry point, strict JSON in every file
written, and the Python API's misuse named by argument and expected type or shape."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxsplit import atomic, cli, contract, envs, latency, zoo

EVAL = ["evaluate", "--policy", "whole_cluster", "--episodes", "1", "--requests", "8"]


@pytest.fixture(scope="module")
def env():
    return envs.make("alloc-v0", requests=8)


def _refuse(text: str) -> None:
    raise ValueError(f"not strict JSON: {text}")


def _strict(text: str):
    """``text`` parsed as strict JSON (NaN, Infinity refused)."""
    return json.loads(text, parse_constant=_refuse)


# ----------------------------------------------------------------------------- loads

@pytest.mark.parametrize("loads", ["1e300", "1e7", "1e-7", "0.5,1e300", "nan", "inf", "-1", "0"])
def test_evaluate_refuses_loads_outside_the_contract(capsys, loads):
    assert cli.main([*EVAL, "--loads", loads]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "field 'loads" in err and "Traceback" not in err, err


@pytest.mark.parametrize("loads", [[1e-6, 1e6], [0.3]])
def test_loads_at_the_contract_bounds_are_accepted(loads):
    assert contract.check_loads(loads) == tuple(loads)


_OUTSIDE = st.one_of(st.floats(max_value=1e-6, exclude_max=True), st.floats(min_value=1e6, exclude_min=True),
                     st.just(math.nan), st.just(math.inf), st.just(-math.inf))


@settings(max_examples=30)
@given(good=st.lists(st.floats(1e-6, 1e6), max_size=3), bad=_OUTSIDE, at=st.integers(0, 3))
def test_python_evaluate_refuses_drawn_loads_outside_the_contract(env, good, bad, at):
    loads = list(good)
    loads.insert(min(at, len(loads)), bad)
    with pytest.raises(ValueError, match=r"field 'loads\[\d\]' must be in \[1e-06, 1e\+06\]"):
        envs.evaluate("whole_cluster", *env, loads=loads, episodes=1)


@pytest.mark.parametrize("loads, message", [
    (0.5, "field 'loads': expected a sequence of numbers"), ("0.5", "field 'loads': expected a sequence"),
    ([], "field 'loads': need at least one load"), (["a"], "field 'loads[0]' must be a number"),
    ([True], "field 'loads[0]' must be a number")])
def test_python_evaluate_names_a_malformed_loads_argument(env, loads, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        envs.evaluate("whole_cluster", *env, loads=loads, episodes=1)


# ----------------------------------------------------------------------------- bytes per element

@pytest.mark.parametrize("q", [0, -1.0, 1e-4, 2e3, math.nan, math.inf, "4", True, None])
def test_layer_arrays_refuses_bytes_per_element_outside_the_contract(q):
    with pytest.raises(ValueError, match="field 'bytes_per_element'"):
        latency.layer_arrays(zoo.get("alexnet", (64, 64)), bytes_per_element=q)


@settings(max_examples=20)
@given(q=st.one_of(st.floats(max_value=1e-3, exclude_max=True), st.floats(min_value=1e3, exclude_min=True)))
def test_layer_arrays_refuses_drawn_bytes_per_element(q):
    with pytest.raises(ValueError, match="field 'bytes_per_element'"):
        latency.layer_arrays_numpy(zoo.get("alexnet", (64, 64)), bytes_per_element=q)


# ----------------------------------------------------------------------------- seeds

@pytest.mark.parametrize("argv", [["train", "--seed", "99999999999999999999"],
                                  ["train", "--seed", str(2**63)],
                                  ["evaluate", "--seed", "99999999999999999999", "--loads", "0.5"],
                                  ["sweep", "--seed", str(2**32), "--space", "lr=1e-4:1e-2"]])
def test_a_seed_outside_64_bits_is_one_line(tmp_path, capsys, argv):
    assert cli.main([*argv, "--out", str(tmp_path / "o")] if argv[0] != "evaluate" else argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "field 'seed' must be an integer in" in err, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- Infinity in JSON

@pytest.mark.parametrize("bandwidth, ok", [("Infinity", True), ("null", True), ("-Infinity", False),
                                           ("NaN", False), ("1e25", False)])
def test_bandwidth_infinity_is_a_local_device(tmp_path, capsys, bandwidth, ok):
    path = tmp_path / "i.json"
    path.write_text('{"model": "alexnet", "input_size": [64, 64], "devices": [{"flops": 1e10, "bandwidth": '
                    f'{bandwidth}}}, {{"flops": 2e10, "bandwidth": 1e8}}]}}')
    code = cli.main(["split", str(path), "--json"])
    out, err = capsys.readouterr()
    if ok:
        assert code == 0, err
        assert math.isfinite(_strict(out.splitlines()[0])["latency"])
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "bandwidth" in err, err


# ----------------------------------------------------------------------------- strict JSON

_JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4),
                                  st.floats(width=32).map(np.float32), st.floats().map(np.float64)),
                        lambda kids: st.one_of(st.lists(kids, max_size=4),
                                               st.dictionaries(st.text(max_size=3), kids, max_size=4)),
                        max_leaves=12)


@settings(max_examples=50)
@given(obj=_JSONISH)
def test_strict_json_writes_non_finite_numbers_as_null(obj):
    text = atomic.dumps(obj)
    back = _strict(text)

    def same(a, b):
        if isinstance(a, (float, np.floating)):
            return b is None if not math.isfinite(float(a)) else b == float(a)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    assert same(obj, back)


@pytest.mark.slow
def test_a_sweep_with_one_evaluation_episode_writes_strict_json(tmp_path):
    import optuna

    from jaxsplit.agents.ppo import PPOConfig
    from jaxsplit.agents.space import parse_dimension
    from jaxsplit.agents.sweep import Sweep, SweepSettings

    sweep = Sweep(tmp_path, envs.EnvSpec(env="alloc-n2-v0", models="alexnet"),
                  PPOConfig(total_timesteps=512, num_envs=16, num_steps=8, num_minibatches=2),
                  [parse_dimension("lr=1e-4:1e-2:log")],
                  SweepSettings(trials=1, population=2, eval_episodes=1, eval_requests=8, eval_loads=(0.5,)),
                  baselines=["whole_cluster"], storage="sqlite:///:memory:")
    baselines = sweep.baselines()
    assert baselines[0]["mean_latency_s_ci"] is None or math.isnan(baselines[0]["mean_latency_s_ci"])
    study = optuna.create_study(direction="minimize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    trial.set_user_attr("per_load", [{"load": 0.5, "mean_latency_s": 0.2, "mean_latency_s_ci": math.nan,
                                      "p99_latency_s": 0.4}])
    study.tell(trial, 0.2)
    sweep.write_files(study, sweep.baselines())  # the second call reads baselines.json back
    _strict((tmp_path / "baselines.json").read_text())
    for line in (tmp_path / "trials.jsonl").read_text().splitlines():
        record = _strict(line)
        assert record["per_load"][0]["mean_latency_s_ci"] is None
    assert "0.2 ± -" in (tmp_path / "leaderboard.md").read_text()
