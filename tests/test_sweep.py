"""`jaxsplit sweep`: the search space, a sweep end to end, resume, refusals, and population-based training.

The sweeps here are tiny (2-device environment, 16 environments, a few updates) so that the module
compiles the population program once (the compilation cache serves the later sweeps)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit.agents import checkpoint
from jaxsplit.agents.pbt import exploit_explore
from jaxsplit.agents.ppo import PPOConfig
from jaxsplit.agents.run import train_run
from jaxsplit.agents.space import Dimension, check_space, load_space_file, parse_dimension
from jaxsplit.agents.sweep import NothingToDo, Sweep, SweepSettings
from jaxsplit.commands import evaluate as evaluate_cmd
from jaxsplit.envs import EnvSpec

SPEC = EnvSpec(env="alloc-n2-v0", models="alexnet,resnet18", requests=16)
CONFIG = PPOConfig(total_timesteps=16 * 8 * 4, num_envs=16, num_steps=8, num_minibatches=2, hidden=(16,),
                   update_epochs=1)
SPACE = (parse_dimension("lr=3e-4:3e-2:log"),)


def settings(**kw) -> SweepSettings:
    base = dict(trials=4, population=2, sampler="random", eval_loads=(0.6, 1.2), eval_episodes=2, eval_requests=24, chunk=2,
                heartbeat=1)
    return SweepSettings(**{**base, **kw})


@pytest.fixture(autouse=True)
def _cache(compilation_cache):
    return compilation_cache


# ----- the search space ---------------------------------------------------------------------------

def test_space_parsing_and_its_errors(tmp_path):
    assert parse_dimension("lr=1e-4:1e-2:log") == Dimension("lr", 1e-4, 1e-2, True)
    assert parse_dimension("ent-coef=0,0.01, 0.03").choices == (0.0, 0.01, 0.03)
    for text, message in [("lr=1e-2:1e-4", "empty or inverted"), ("lr=0:1e-2:log", "LOW > 0"),
                          ("lr=", "expected NAME"), ("lr=1:x", "not a number"), ("lr=1:2:ln", "LOW:HIGH:log"),
                          ("lr=nan:1", "not finite")]:
        with pytest.raises(ValueError, match=message):
            parse_dimension(text)
    _, params = SPEC.make()
    with pytest.raises(ValueError, match=r"unknown setting; searchable: lr, ent_coef.*util_weight"):
        check_space([parse_dimension("learning_rate=1:2")], params)
    with pytest.raises(ValueError, match=r"num_envs: a static setting.*--num-envs"):
        check_space([parse_dimension("num_envs=8,16")], params)
    with pytest.raises(ValueError, match="gamma: value 1.5 is outside its domain"):
        check_space([parse_dimension("gamma=0.9:1.5")], params)
    with pytest.raises(ValueError, match="given twice"):
        check_space([parse_dimension("lr=1e-4:1e-3"), parse_dimension("lr=1e-3,1e-2")], params)
    check_space([parse_dimension("util_weight=0:0.5"), parse_dimension("gamma=0.9,0.99")], params)
    path = tmp_path / "space.toml"
    path.write_text('[space]\nlr = "1e-4:3e-3:log"\nent_coef = [0.0, 0.01]\ngamma = { low = 0.9, high = 0.99 }\n')
    assert load_space_file(path) == [Dimension("lr", 1e-4, 3e-3, True), Dimension("ent_coef", 0.0, 0.01, False, (0.0, 0.01)),
                                     Dimension("gamma", 0.9, 0.99)]
    path.write_text("[space]\nlr = true\n")
    with pytest.raises(ValueError, match="--space-file lr"):
        load_space_file(path)
    path.write_bytes(b"\xff\xfe[")
    with pytest.raises(ValueError, match="not TOML"):
        load_space_file(path)


def test_sweep_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="multiple of --seeds"):
        Sweep(tmp_path, SPEC, CONFIG, SPACE, settings(population=3, seeds=2))
    with pytest.raises(ValueError, match="local devices"):
        Sweep(tmp_path, SPEC, CONFIG, SPACE, settings(population=3), devices=jax.local_devices() * 2)
    with pytest.raises(ValueError, match="grid: dimension lr is a range"):
        Sweep(tmp_path, SPEC, CONFIG, SPACE, settings(sampler="grid"))
    with pytest.raises(ValueError, match="the grid has only 2 points"):
        Sweep(tmp_path, SPEC, CONFIG, [parse_dimension("lr=1e-3,1e-2")], settings(sampler="grid", trials=3))
    with pytest.raises(ValueError, match="at least one dimension"):
        Sweep(tmp_path, SPEC, CONFIG, (), settings())
    with pytest.raises(ValueError, match="unknown baseline 'nope'"):
        Sweep(tmp_path, SPEC, CONFIG, SPACE, settings(), baselines=["nope"])
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        Sweep(tmp_path / "file", SPEC, CONFIG, SPACE, settings())
    bad = Sweep(tmp_path / "s", SPEC, CONFIG, SPACE, settings(), storage="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ValueError, match=r"--storage '127.0.0.1:1/none': cannot open the study database"):
        bad.run()
    assert not (tmp_path / "s").exists()  # nothing written


# ----- a sweep end to end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory, compilation_cache):
    out = tmp_path_factory.mktemp("sweep")
    sweep = Sweep(out, SPEC, CONFIG, SPACE, settings(), baselines=["random", "myopic"])
    sweep.run()
    return out, sweep


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sweep_writes_every_file_and_a_loadable_best_run(finished):
    out, sweep = finished
    records = _records(out)
    assert [r["number"] for r in records] == [0, 1, 2, 3] and {r["state"] for r in records} == {"complete"}
    values = [r["params"]["lr"] for r in records]
    assert len(set(values)) == 4 and all(3e-4 <= v <= 3e-2 for v in values)
    for r in records:
        assert r["objective"] == pytest.approx(np.mean([p["mean_latency_s"] for p in r["per_load"]]))
        assert [p["load"] for p in r["per_load"]] == [0.6, 1.2] and r["env_steps"] == CONFIG.num_updates * CONFIG.batch_size
    for name in ("leaderboard.md", "objective.png", "history.png", "baselines.json", "study.db"):
        assert (out / name).stat().st_size > 0, name
    board = (out / "leaderboard.md").read_text()
    best = min(records, key=lambda r: r["objective"])
    assert f"| 1 | {best['number']} | lr={best['params']['lr']:.4g} |" in board
    assert "best baseline at each load" in board
    # best/ is a run folder of the best trial: evaluate --checkpoint reproduces its recorded figures
    assert (out / "best").resolve() == (out / "runs" / f"trial-{best['number']}").resolve()
    rows = evaluate_cmd.run(evaluate_cmd.EvaluateArgs(policy="ppo", loads="0.6,1.2", episodes=2, requests=24,
                                                      seed=0, warmup=0.1, checkpoint=(str(out / "best"),)))
    for row, rec in zip(rows, best["per_load"]):
        assert row["mean_latency_s"] == pytest.approx(rec["mean_latency_s"], rel=1e-4)


@pytest.mark.slow
def test_best_member_equals_train_alone(finished, tmp_path):
    # one member of a population ends with the parameters of `jaxsplit train` of its configuration alone
    out, _ = finished
    trial = json.loads((out / "best" / "trial.json").read_text())
    config = dataclasses.replace(CONFIG, lr=trial["params"]["lr"])
    _, alone = train_run(config, tmp_path / "alone", SPEC, seed=trial["seed"], log_every=2, checkpoint_every=100)
    from jaxsplit.agents.run import load_run

    _, member = load_run(out / "best")
    for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(member.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-5)
    saved = json.loads((out / "best" / "config.json").read_text())
    assert saved["ppo"]["lr"] == pytest.approx(trial["params"]["lr"]) and saved["seed"] == trial["seed"]


@pytest.mark.slow
def test_resume_continues_the_study_without_rerunning(finished):
    out, _ = finished
    before = _records(out)
    more = Sweep(out, SPEC, CONFIG, SPACE, settings(trials=6), baselines=["random", "myopic"])
    more.run()
    after = _records(out)
    assert [r["number"] for r in after] == list(range(6)) and all(r["state"] == "complete" for r in after)
    assert after[:4] == before  # finished trials were not run again
    with pytest.raises(NothingToDo, match="already holds 6 complete trials"):
        Sweep(out, SPEC, CONFIG, SPACE, settings(trials=5)).run()
    with pytest.raises(ValueError, match=r"the space \(lr=0.0001:0.03:log\) differs from the study's"):
        Sweep(out, SPEC, CONFIG, [parse_dimension("lr=1e-4:3e-2:log")], settings(trials=8)).run()
    with pytest.raises(ValueError, match="ppo setting ent_coef=0.1 differs from the study's 0.03"):
        Sweep(out, SPEC, dataclasses.replace(CONFIG, ent_coef=0.1), SPACE, settings(trials=8)).run()
    with pytest.raises(ValueError, match="sweep setting eval_episodes=3 differs"):
        Sweep(out, SPEC, CONFIG, SPACE, settings(trials=8, eval_episodes=3)).run()


# ----- population-based training ------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Runner:
    params: jax.Array
    opt_state: jax.Array
    obs_stats: jax.Array
    ret_stats: jax.Array
    env_state: jax.Array

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


def test_exploit_copies_the_best_and_perturbs_within_the_space():
    from jaxsplit.agents.ppo import HyperParams, TRACED

    size = 8
    fitness = jnp.asarray([5.0, 1.0, 7.0, 0.0, 3.0, 6.0, 2.0, 4.0])  # best: 2, 5; worst: 3, 1
    member = jnp.arange(size, dtype=jnp.float32)
    runners = _Runner(member, member * 10, member * 100, member * 1000, member + 0.5)
    hp = HyperParams(**{n: jnp.full((size,), 0.5, jnp.float32) for n in TRACED},
                     env=jax.tree.map(lambda x: jnp.broadcast_to(x, (size,) + jnp.shape(x)), SPEC.make()[1]))
    hp = hp.replace(lr=jnp.linspace(1e-3, 2e-3, size), ent_coef=jnp.full((size,), 0.01))
    dims = (Dimension("lr", 1e-3, 1.9e-3, True), Dimension("ent_coef", 0.0, 0.03, False, (0.0, 0.01, 0.03)),
            Dimension("util_weight", 0.1, 0.3))
    fn = jax.jit(exploit_explore, static_argnames=("dims", "fraction", "perturb", "resample"))
    out, new_hp, source = fn(jax.random.PRNGKey(3), fitness, runners, hp, dims=dims, fraction=0.25,
                             perturb=1.25, resample=1.0)
    source = np.asarray(source)
    kept = [p for p in range(size) if p not in (3, 1)]
    assert list(source[kept]) == kept and set(source[[3, 1]]) <= {2, 5}
    for name, scale in (("params", 1), ("opt_state", 10), ("obs_stats", 100), ("ret_stats", 1000)):
        np.testing.assert_array_equal(np.asarray(getattr(out, name)), source * scale)
    np.testing.assert_array_equal(np.asarray(out.env_state), np.asarray(runners.env_state))  # own environments
    lr, src_lr = np.asarray(new_hp.lr), np.asarray(hp.lr)[source]
    np.testing.assert_array_equal(lr[kept], np.asarray(hp.lr)[kept])
    for p in (1, 3):
        ratio = lr[p] / src_lr[p]
        assert np.isclose(ratio, 1.25, rtol=1e-5) or np.isclose(ratio, 0.8, rtol=1e-5) or lr[p] == np.float32(1.9e-3)
        assert 1e-3 <= lr[p] <= np.float32(1.9e-3)
        assert float(new_hp.ent_coef[p]) in (0.0, np.float32(0.01), np.float32(0.03))
        assert 0.1 <= float(new_hp.env.util_weight[p]) <= np.float32(0.3)
    again = fn(jax.random.PRNGKey(3), fitness, runners, hp, dims=dims, fraction=0.25, perturb=1.25, resample=1.0)
    np.testing.assert_array_equal(np.asarray(again[2]), source)  # same key, same copies
    other = [np.asarray(fn(jax.random.PRNGKey(k), fitness, runners, hp, dims=dims, fraction=0.25, perturb=1.25,
                           resample=1.0)[2]) for k in range(8)]
    assert any(not np.array_equal(o, source) for o in other)  # the key decides


@pytest.mark.slow
def test_pbt_sweep_resumes_from_its_chunk_checkpoint(tmp_path):
    class Stop(Exception):
        pass

    space = (parse_dimension("lr=3e-4:3e-2:log"), parse_dimension("ent_coef=0,0.01,0.03"))
    pbt = settings(schedule="pbt", population=4, trials=4, chunk=1)
    whole = Sweep(tmp_path / "whole", SPEC, CONFIG, space, pbt)
    rows = [dict(lr=1e-3 * (p + 1), ent_coef=0.01, seed=p) for p in range(4)]
    ref_runners, ref_hp, ref_metrics, ref_lineage = whole._train(rows, tmp_path / "whole" / "pop", False, 4)
    assert len(ref_lineage) == CONFIG.num_updates - 1

    def stop_after_two(event):
        if event["update"] == 2:
            raise Stop

    cut = Sweep(tmp_path / "cut", SPEC, CONFIG, space, pbt, on_progress=stop_after_two)
    assert cut.runner() is whole.runner()  # one compiled program per process
    with pytest.raises(Stop):
        cut._train(rows, tmp_path / "cut" / "pop", False, 4)
    assert checkpoint.latest_step(tmp_path / "cut" / "pop") == 2
    cut.on_progress = None
    runners, hp, metrics, lineage = cut._train(rows, tmp_path / "cut" / "pop", True, 4)
    assert lineage == ref_lineage
    for a, b in zip(jax.tree.leaves((ref_runners.params, ref_hp)), jax.tree.leaves((runners.params, hp))):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    np.testing.assert_array_equal(metrics["reward"], ref_metrics["reward"])
