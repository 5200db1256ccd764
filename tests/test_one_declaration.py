"""One declaration each: every entry point builds its environment from EnvSpec and its evaluation
episodes from Protocol, so that changing one default of either changes them all."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from jaxsplit import envs
from jaxsplit.commands import evaluate as evaluate_cmd
from jaxsplit.commands import options, sweep as sweep_cmd, train as train_cmd
from jaxsplit.envs import EnvSpec, Protocol
from jaxsplit.envs.actions import ShareAction
from jaxsplit.envs.alloc import AllocationEnv
from jaxsplit.agents.ppo import deferred_checks


def set_default(monkeypatch, cls: type, name: str, value) -> None:
    """Change the default of field ``name`` of the dataclass ``cls`` for this test (its constructor's,
    and the field's, which tyro's help reads)."""
    fields = dataclasses.fields(cls)
    index = [f.name for f in fields].index(name)
    defaults = list(cls.__init__.__defaults__)
    defaults[index - (len(fields) - len(defaults))] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))
    monkeypatch.setattr(fields[index], "default", value)


def signature(env, params) -> tuple:
    """What makes two environments the same problem in the same form."""
    base = env.unwrapped if isinstance(env, ShareAction) else env
    form = (type(env).__name__, getattr(env, "levels", None), getattr(env, "discrete", None))
    return (form, base.num_devices, base.slots, base.models, base.input_size, base.requests, base.split,
            base.reward_scale, base.observation_kind, base.obs_dim, float(params.load_min), float(params.load_max),
            float(params.util_weight), float(params.churn))


def _evaluate_env(argv: list[str]) -> tuple:
    """The baselines' environment and protocol of ``jaxsplit evaluate argv`` (nothing compiled)."""
    seen = {}

    def capture(names, env, params, options=None, protocol=None):
        seen.update(env=env, params=params, protocol=protocol)
        return []

    args = options.parse(evaluate_cmd.EvaluateArgs, argv, "jaxsplit evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_cmd, "evaluate_baselines", capture)
        evaluate_cmd.run(args)
    return seen["env"], seen["params"], seen["protocol"]


def entry_points() -> dict[str, tuple]:
    """name -> (env signature, protocol) of every entry point at its defaults."""
    with deferred_checks():
        train_args = options.parse(train_cmd.TrainArgs, [], "jaxsplit train")
        sweep_args = options.parse(sweep_cmd.SweepArgs, [], "jaxsplit sweep")
    e_env, e_params, e_protocol = _evaluate_env([])
    return {
        "envs.make": (signature(*envs.make(envs.MAIN)), None),
        "EnvSpec": (signature(*EnvSpec().make()), None),
        "train": (signature(*train_args.environment.make()), train_cmd.protocol(train_args)),
        "sweep": (signature(*sweep_args.environment.make()), sweep_args.sweep.protocol()),
        # with the protocol's requests per episode (a baseline runs on it unwrapped)
        "evaluate": (signature(e_env, e_params), e_protocol),
    }


def _check_same(points: dict[str, tuple], protocol: Protocol) -> None:
    main = signature(*EnvSpec().make())
    for name, (sig, proto) in points.items():
        want = signature(*EnvSpec().make(requests=protocol.requests)) if name == "evaluate" else main
        assert sig == want, name
        assert proto is None or proto == protocol, name


def test_every_entry_point_builds_the_main_environment_and_protocol_of_the_declarations():
    points = entry_points()
    _check_same(points, Protocol())
    env, _ = envs.make(envs.MAIN)
    assert env.obs_dim == 108 and env.reward_scale == "mean" and env.observation_kind == "table"
    assert env.form == "clip_pairs" and env.discrete
    assert Protocol() == Protocol((0.3, 0.6, 0.9, 1.2), 16, 256, 0.1, 0)


def test_changing_one_default_changes_every_entry_point(monkeypatch):
    set_default(monkeypatch, EnvSpec, "reward_scale", "model")
    set_default(monkeypatch, EnvSpec, "observation", "summary")
    set_default(monkeypatch, EnvSpec, "requests", 40)
    set_default(monkeypatch, Protocol, "episodes", 3)
    set_default(monkeypatch, Protocol, "loads", (0.5, 0.7))
    set_default(monkeypatch, Protocol, "seed", 9)
    points = entry_points()
    _check_same(points, Protocol((0.5, 0.7), 3, 256, 0.1, 9))
    env, _ = envs.make(envs.MAIN)
    assert (env.reward_scale, env.observation_kind, env.requests, env.obs_dim) == ("model", "summary", 40, 28)
    # the help shows the changed defaults
    assert "(default: 3)" in _help(train_cmd.TrainArgs, "--eval-episodes")


@pytest.mark.slow
def test_envs_evaluate_reads_the_protocol(monkeypatch):
    """envs.evaluate and jaxsplit evaluate run the protocol's episodes: the same records."""
    set_default(monkeypatch, Protocol, "episodes", 2)
    set_default(monkeypatch, Protocol, "requests", 12)
    set_default(monkeypatch, Protocol, "loads", (0.6,))
    env, params = envs.make(envs.MAIN)
    rows = envs.evaluate("whole_cluster", env, params)
    assert [(r["load"], r["episodes"], r["requests"], r["seed"]) for r in rows] == [(0.6, 2, 12, 0)]
    cli_rows = evaluate_cmd.run(options.parse(evaluate_cmd.EvaluateArgs, ["--policy", "whole_cluster"], "x"))
    assert cli_rows == rows


def _help(cls: type, flag: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit), deferred_checks():
        options.parse(cls, ["--help"], "jaxsplit train")
    text = out.getvalue()
    return text[text.index(flag):][:400]


def test_the_plain_model_is_alloc_v0_and_the_environments_defaults():
    """alloc-v0 is the paper's plain model (MODEL.md section 6), AllocationEnv's own defaults."""
    env, params = envs.make("alloc-v0")
    assert isinstance(env, AllocationEnv) and env.obs_dim == 28
    own = inspect.signature(AllocationEnv.__init__).parameters
    assert envs.PLAIN["reward_scale"] == own["reward_scale"].default == env.reward_scale
    assert envs.PLAIN["observation"] == own["observation"].default == env.observation_kind
    assert envs.named("alloc-v0").make()[0].obs_dim == 28
    # every registered problem in the plain form keeps its own observation (sets for the generalist)
    assert envs.make("alloc-any-v0")[0].observation_kind == "sets"
    # alloc-main-v0 and alloc-v0 are one problem: EnvSpec takes either as its env
    assert signature(*EnvSpec(env=envs.MAIN).make()) == signature(*EnvSpec().make())
    assert envs.MAIN in envs.registered() and "alloc-v0" in envs.registered()
    with pytest.raises(ValueError, match="field 'name': unknown environment 'nope'"):
        envs.make("nope")
