"""``jaxsplit train`` end to end on the real environment (tiny settings).

One tiny run with the final evaluation (every baseline) on the cluster of examples/vgg16_cluster.json
is trained once for the module; its report's table must be what the ``jaxsplit evaluate`` command
printed in the report gives, and its folder alone must rebuild the run's environment.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import tyro

from jaxsplit import cli, envs
from jaxsplit.agents.ppo import PPOConfig
from jaxsplit.agents.run import evaluation_env, run_config_json
from jaxsplit.commands import evaluate as evaluate_cmd
from jaxsplit.commands import train
from jaxsplit.envs import EnvSpec, policies
from jaxsplit.envs.evaluation import METRICS, markdown_table

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = "examples/vgg16_cluster.json"  # relative to ROOT: the run must record it as an absolute path
#: 2 updates of a tiny network on short episodes (in one chunk: the training program of
#: tests/test_agent_evaluate_cli.py's run)
TINY = ["--total-timesteps", "512", "--num-envs", "16", "--num-steps", "16", "--num-minibatches", "2",
        "--update-epochs", "1", "--hidden", "16", "--requests", "32", "--log-every", "2", "--checkpoint-every", "2",
        "--no-progress"]
EVAL = ["--eval-episodes", "2", "--eval-requests", "48", "--eval-loads", "0.3", "1.2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, compilation_cache):
    """A tiny run on the example cluster, with the final evaluation of every baseline and the report."""
    out = tmp_path_factory.mktemp("train") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        assert train.main([*TINY, "--cluster", CLUSTER_FILE, "--out", str(out), *EVAL]) == 0
    return out


def report_parts(run_dir: Path) -> tuple[str, list[str]]:
    """The evaluate command line printed in report.md and the lines of the table under it."""
    text = (run_dir / "report.md").read_text()
    command = text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    after = text.split("```bash\n", 1)[1].split("\n```", 1)[1].lstrip("\n")
    table = after.split("\n\n", 1)[0].splitlines()
    return command, table


@pytest.mark.slow
def test_train_writes_the_run_folder(run_dir):
    for name in ("config.json", "metrics.jsonl", "evaluation.json", "report.md", "training_curve.png",
                 "latency_vs_load.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "2").is_dir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2] and rows[-1]["env_steps"] == 512
    results = json.loads((run_dir / "evaluation.json").read_text())
    assert [r["policy"] for r in results] == [p for p in [*policies.POLICIES, "ppo"] for _ in range(2)]
    assert all(r["mean_latency_s"] > 0 and r["p95_latency_s"] > 0 for r in results)
    assert {r["load"] for r in results} == {0.3, 1.2}
    assert all(r["episodes"] == 2 and r["requests"] == 48 for r in results)
    assert "| ppo |" in (run_dir / "report.md").read_text()
    # a second fresh run into the same folder is refused and keeps the checkpoint
    assert cli.main(["train", "--out", str(run_dir), *TINY]) == 2
    assert (run_dir / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_report_table_is_what_its_evaluate_command_prints(run_dir, monkeypatch, capsys):
    command, table = report_parts(run_dir)
    argv = shlex.split(command)
    assert argv[:2] == ["jaxsplit", "evaluate"] and argv[-1] == "--markdown"
    assert argv[argv.index("--checkpoint") + 1] == str(run_dir)
    computed = []  # the records the command computes (what --json would print instead of the table)
    run = evaluate_cmd.run
    monkeypatch.setattr(evaluate_cmd, "run", lambda args: computed.extend(run(args)) or computed)
    monkeypatch.chdir(ROOT.parent)  # anywhere: the run folder records the cluster's absolute path
    capsys.readouterr()
    assert cli.main(argv[1:]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("| policy | rho=0.3 | rho=1.2 |") and len(printed) == 2 + len(policies.POLICIES) + 1
    assert printed == table
    # evaluation.json holds the records of `jaxsplit evaluate ... --json`
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert saved == json.loads(evaluate_cmd.json_records(computed))
    assert markdown_table(saved).splitlines() == table
    for r in saved:
        assert {m for m in METRICS} <= set(r) and r["seed"] == 0 and r["warmup"] == 0.1


@pytest.mark.slow
def test_the_run_records_its_cluster_and_evaluates_on_it(run_dir, monkeypatch, capsys):
    cluster_path = (ROOT / CLUSTER_FILE).resolve()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["env"]["cluster"] == str(cluster_path) and Path(saved["env"]["cluster"]).is_absolute()
    # config.json is the parsed command line (the cluster made absolute)
    with monkeypatch.context() as mp:
        mp.chdir(ROOT)
        args = tyro.cli(train.TrainArgs, args=[*TINY, "--cluster", CLUSTER_FILE, "--out", str(run_dir), *EVAL])
    spec = dataclasses.replace(args.environment, cluster=str(cluster_path))
    assert saved == run_config_json(args.ppo, spec, args.seed)

    devices = json.loads(cluster_path.read_text())["devices"]
    cluster = envs.load_cluster(cluster_path)
    monkeypatch.chdir(ROOT.parent)
    argv = ["evaluate", "--checkpoint", str(run_dir), "--policy", "ppo,whole_cluster", "--loads", "0.9",
            "--episodes", "2", "--requests", "32", "--json"]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["ppo", "whole_cluster"]
    assert all(r["requests"] == 32 and r["mean_latency_s"] > 0 and r["throughput_rps"] > 0 for r in rows)
    # the policy's environment is the cluster's: its device count, its capacities
    p_env, p_params, _, _ = evaluation_env(run_dir, 32)
    assert p_env.num_devices == len(devices) and bool(p_params.fixed_cluster)
    np.testing.assert_allclose(p_params.cluster_flops, cluster[0], rtol=1e-6)
    # the baseline ran on exactly the episodes of that cluster
    env, params = envs.make("alloc-v0", cluster=cluster, requests=32, reward_scale="mean", observation="table")
    direct = envs.evaluate("whole_cluster", env, params, [0.9], episodes=2, requests=32)[0]
    for metric in METRICS:
        assert rows[1][metric] == pytest.approx(direct[metric], rel=1e-6, abs=1e-12), metric


#: a value other than the default for every field of EnvSpec and PPOConfig, as a flag of `jaxsplit train`
ENV_FLAGS = {"env": ("--env", "alloc-n8-v0"), "cluster": ("--cluster", CLUSTER_FILE), "models": ("--models", "vgg16"),
             "loads": ("--loads", "0.5,1.0"), "split": ("--split", "equal"), "reward_scale": ("--reward-scale", "model"),
             "observation": ("--observation", "summary"), "requests": ("--requests", "40"),
             "util_weight": ("--util-weight", "0.25"), "devices": ("--devices", "2,3"), "churn": ("--churn", "0.3"),
             "rejoin": ("--rejoin", "0.6"), "action": ("--action", "common"),
             "distribution": ("--distribution", "beta"), "share_levels": ("--share-levels", "0"),
             "pair_levels": ("--pair-levels", "0.2", "1.0")}
PPO_FLAGS = {"total_timesteps": ("--total-timesteps", "4096"), "num_envs": ("--num-envs", "16"),
             "num_steps": ("--num-steps", "32"), "update_epochs": ("--update-epochs", "2"),
             "num_minibatches": ("--num-minibatches", "4"), "hidden": ("--hidden", "32", "8"),
             "anneal_lr": ("--no-anneal-lr",), "normalize_obs": ("--no-normalize-obs",),
             "normalize_reward": ("--no-normalize-reward",), "reward_groups": ("--reward-groups", "3"),
             "init_concentration": ("--init-concentration", "4.0"), "init_mean": ("--init-mean", "0.3"),
             "lr": ("--lr", "0.002"), "ent_coef": ("--ent-coef", "0.01"), "clip_eps": ("--clip-eps", "0.1"),
             "vf_coef": ("--vf-coef", "0.25"), "gamma": ("--gamma", "0.9"), "gae_lambda": ("--gae-lambda", "0.8"),
             "max_grad_norm": ("--max-grad-norm", "1.5")}
ENV_WANT = dict(env="alloc-n8-v0", cluster=CLUSTER_FILE, models="vgg16", loads="0.5,1.0", split="equal",
                reward_scale="model", observation="summary", requests=40, util_weight=0.25, devices="2,3", churn=0.3,
                rejoin=0.6, action="common",
                distribution="beta", share_levels=0, pair_levels=[0.2, 1.0])
PPO_WANT = dict(total_timesteps=4096, num_envs=16, num_steps=32, update_epochs=2, num_minibatches=4, hidden=[32, 8],
                anneal_lr=False, normalize_obs=False, normalize_reward=False, reward_groups=3, init_concentration=4.0,
                init_mean=0.3, lr=0.002, ent_coef=0.01, clip_eps=0.1, vf_coef=0.25, gamma=0.9, gae_lambda=0.8,
                max_grad_norm=1.5)


def test_the_planner_flag_reaches_the_recorded_configuration():
    args = tyro.cli(train.TrainArgs, args=["--planner", "fused", "--models", "alexnet", "--out", "runs/x"])
    train.validate(args)
    assert EnvSpec().planner == "layer"
    assert run_config_json(args.ppo, args.environment, args.seed)["env"]["planner"] == "fused"
    env, _ = args.environment.make()
    assert getattr(env, "env", env).planner == "fused"


def test_every_train_flag_reaches_the_recorded_configuration(monkeypatch):
    # the tables above cover every setting, each with a value other than its default
    # (the planner apart: "fused" goes with the closed form only, and these flags ask for the equal split;
    # test_the_planner_flag_reaches_the_recorded_configuration sets it)
    assert set(ENV_FLAGS) == set(ENV_WANT) == {f.name for f in dataclasses.fields(EnvSpec)} - {"planner"}
    assert set(PPO_FLAGS) == set(PPO_WANT) == {f.name for f in dataclasses.fields(PPOConfig)}
    assert all(EnvSpec().to_json()[k] != v for k, v in ENV_WANT.items())
    assert all(PPOConfig().to_json()[k] != v for k, v in PPO_WANT.items())
    argv = [word for flag in (*ENV_FLAGS.values(), *PPO_FLAGS.values()) for word in flag]
    argv += ["--seed", "7", "--out", "runs/x", "--eval-requests", "64", "--eval-loads", "0.4", "0.8",
             "--eval-policies", "whole_cluster", "myopic", "--skip-eval"]
    args = tyro.cli(train.TrainArgs, args=argv)
    assert (args.seed, args.out, args.eval_requests, args.eval_loads, args.eval_policies, args.skip_eval) == (
        7, Path("runs/x"), 64, (0.4, 0.8), ("whole_cluster", "myopic"), True)
    train.validate(args)
    assert run_config_json(args.ppo, args.environment, args.seed) == {"env": {**ENV_WANT, "planner": "layer"},
                                                                      "ppo": PPO_WANT, "seed": 7}
    # and the environment built from the recorded spec is the one the flags ask for
    monkeypatch.chdir(ROOT)
    spec = EnvSpec.from_json(json.loads(json.dumps(run_config_json(args.ppo, args.environment, args.seed)))["env"])
    env, params = spec.base()
    assert env.split == "equal" and env.models == ("vgg16",) and env.requests == 40
    assert env.num_devices == 4  # the cluster's length sets N
    assert env.reward_scale == "model" and env.observation_kind == "summary"
    assert (float(params.load_min), float(params.load_max), float(params.util_weight)) == (0.5, 1.0, 0.25)
    assert (float(params.devices_min), float(params.devices_max)) == (2, 3)
    assert (float(params.churn), float(params.rejoin)) == pytest.approx((0.3, 0.6))
    wrapped, _ = spec.make()
    assert wrapped.form == "common" and not wrapped.discrete and wrapped.levels == 0
    assert wrapped.action_space(params).shape == (1,)


@pytest.mark.parametrize("flag,value,field", [("--num-envs", "0", "num_envs"), ("--lr", "-1", "lr"),
                                              ("--log-every", "0", "log-every"), ("--gamma", "2", "gamma"),
                                              ("--loads", "1.0,0.5", "loads"), ("--models", "vgg17", "models"),
                                              ("--eval-policies", "greedy", "eval-policies")])
def test_bad_flags_raise_value_error_naming_the_field(tmp_path, flag, value, field):
    with pytest.raises(ValueError, match=field):
        train.main(["--out", str(tmp_path / "x"), *TINY, flag, value])
    assert not (tmp_path / "x").exists()  # nothing written


@pytest.mark.parametrize("flags", [["--log-every", "1"], ["--checkpoint-every", "1"], ["--eval-episodes", "1"],
                                   ["--eval-requests", "2"], ["--eval-warmup", "0"], ["--eval-warmup", "0.99"],
                                   ["--eval-loads", "0.01", "1.5"], ["--resume"], ["--overwrite"]])
def test_bad_flags_spare_the_values_at_their_bounds(flags):
    """The smallest valid value of each run option passes the checks (one of a kind each)."""
    train.validate(tyro.cli(train.TrainArgs, args=flags))


@pytest.mark.parametrize("flags, message", [
    (["--log-every", "0"], "--log-every must be >= 1, got 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    (["--eval-episodes", "0"], "--eval-episodes must be >= 1, got 0"),
    (["--eval-requests", "1"], "--eval-requests must be >= 2, got 1"),
    (["--eval-warmup", "1"], "--eval-warmup must be in [0, 1), got 1.0"),
    (["--eval-warmup", "-0.1"], "--eval-warmup must be in [0, 1), got -0.1"),
    (["--eval-loads", "0.5", "0"], "--eval-loads must be positive, got (0.5, 0.0)"),
    (["--eval-loads", "nan"], "--eval-loads must be positive, got (nan,)"),
    (["--eval-policies", "myopic", "greedy"],
     "--eval-policies: unknown baseline 'greedy'; known: " + ", ".join(policies.POLICIES)),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other")])
def test_bad_flags_past_their_bounds_are_named_in_full(flags, message):
    with pytest.raises(ValueError) as err:
        train.validate(tyro.cli(train.TrainArgs, args=flags))
    assert str(err.value) == message


@pytest.mark.parametrize("argv, empty", [
    (["--out", ""], True), (["--out", "  "], True), (["--out="], True), (["--seed", "1", "--out", ""], True),
    (["--out", "x"], False), (["--out=x"], False), (["--out"], False), (["--seed", "", "--out", "x"], False),
    (["", "--out", "x"], False), (["--out", "x", "--seed", ""], False)])
def test_bad_flags_an_empty_out_is_told_from_a_missing_or_other_value(argv, empty):
    """``--out ''`` is refused before tyro reads it as the current folder; an empty value of another
    option, or ``--out`` with no value at all (tyro's own error), is not taken for one."""
    assert train._empty_out(argv) is empty


class _Stop(Exception):
    """Raised where the training loop would start: the run folder and its trainer exist by then."""


def test_every_train_flag_reaches_config_json_through_the_command(tmp_path, monkeypatch):
    """`jaxsplit train` with every flag of the environment and PPO set off its default, up to where
    training starts: config.json holds each value, and the trainer gets the environment they ask for
    (the equal split of the ablation, the catalogue, the cluster, the action form)."""
    from jaxsplit.agents import run as run_mod

    seen = []
    real_trainer = run_mod.Trainer

    def recording_trainer(config, env, env_params):
        seen.append((config, env, env_params))
        return real_trainer(config, env, env_params)

    def stop(*_args, **_kwargs):
        raise _Stop

    monkeypatch.setattr(run_mod, "Trainer", recording_trainer)
    monkeypatch.setattr(run_mod.checkpoint, "open_manager", stop)
    monkeypatch.chdir(ROOT)
    argv = [word for flag in (*ENV_FLAGS.values(), *PPO_FLAGS.values()) for word in flag]
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        cli.main(["train", *argv, "--seed", "7", "--out", str(out), "--no-progress", "--skip-eval"])
    saved = json.loads((out / "config.json").read_text())
    assert saved == {"env": {**ENV_WANT, "cluster": str((ROOT / CLUSTER_FILE).resolve()), "planner": "layer"},
                     "ppo": PPO_WANT, "seed": 7}
    (config, wrapped, params), = seen
    assert config == PPOConfig.from_json(PPO_WANT)
    env = wrapped.env
    assert env.split == "equal" and env.models == ("vgg16",) and env.requests == 40 and env.num_devices == 4
    assert env.reward_scale == "model" and env.observation_kind == "summary"
    assert (float(params.load_min), float(params.load_max), float(params.util_weight)) == (0.5, 1.0, 0.25)
    assert (float(params.devices_min), float(params.devices_max)) == (2, 3)
    assert (float(params.churn), float(params.rejoin)) == pytest.approx((0.3, 0.6))
    assert wrapped.form == "common" and not wrapped.discrete and wrapped.levels == 0


def test_overwrite_removes_the_runs_files_through_the_command(tmp_path, monkeypatch):
    """``jaxsplit train --overwrite`` over another run's folder: the new run trains in a folder beside
    the old run's files, which stay whole until it is done (the user's files are never touched)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl", "report.md"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    seen = []

    def stop(config, run_dir, *_args, **_kwargs):
        seen.append((Path(run_dir).parent, sorted(p.name for p in out.iterdir() if not p.name.startswith("."))))
        raise _Stop

    monkeypatch.setattr(train, "train_run", stop)
    with pytest.raises(_Stop):
        train.main(["--out", str(out), "--overwrite", *TINY])
    assert seen == [(out, ["config.json", "metrics.jsonl", "notes.txt", "report.md"])]
    assert all((out / name).read_text() == "old" for name in ("config.json", "metrics.jsonl", "report.md"))


def test_bad_flags_an_empty_out_is_refused_in_full_by_the_command(tmp_path):
    with pytest.raises(ValueError) as err:
        train.main(["--out", "", *TINY])
    assert str(err.value) == "--out: an empty path; name a run folder"


def test_bad_flags_usage_names_the_command(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "usage: jaxsplit train " in capsys.readouterr().out
