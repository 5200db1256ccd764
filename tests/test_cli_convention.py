"""One command-line convention: every list option takes ``a,b,c`` and ``a b c``, and every parse error
of every command is one line ``jaxsplit CMD: error: ...`` naming the option and the value, exit 2.
(Nothing here compiles a training program.)"""

from __future__ import annotations

import importlib.util

import pytest

from jaxsplit import cli
from jaxsplit.commands import bench as bench_cmd
from jaxsplit.commands import evaluate as evaluate_cmd
from jaxsplit.commands import options, sweep as sweep_cmd, train as train_cmd, zoo as zoo_cmd
from jaxsplit.agents.ppo import deferred_checks

HAS_TORCH = importlib.util.find_spec("torch") is not None

#: (command, argv, what the one line must name): a bad value of a list option, and other mistakes
BAD = [
    ("train", ["--eval-loads", "0.3,abc"], ["--eval-loads", "'abc'"]),
    ("train", ["--eval-loads", "0.3", "abc"], ["--eval-loads", "'abc'"]),
    ("train", ["--loads", "abc"], ["'loads'", "'abc'"]),
    ("train", ["--pair-levels", "0.5,x"], ["--pair-levels", "'x'"]),
    ("train", ["--hidden", "64,x"], ["--hidden", "'x'"]),
    ("train", ["--lr", "abc"], ["--lr", "'abc'"]),
    ("train", ["--seed", "1.5"], ["--seed", "'1.5'"]),
    ("train", ["--action", "nope"], ["--action", "'nope'"]),
    ("train", ["--nope", "3"], ["--nope"]),
    ("train", ["--progress", "x"], ["--progress", "'x'"]),
    ("train", ["--lr"], ["--lr"]),
    ("sweep", ["--eval-loads", "abc"], ["--eval-loads", "'abc'"]),
    ("sweep", ["--loads", "abc", "--space", "lr=1e-4:1e-3"], ["'loads'", "'abc'"]),
    ("sweep", ["--sampler", "nope"], ["--sampler", "'nope'"]),
    ("evaluate", ["--loads", "abc"], ["--loads", "'abc'"]),
    ("evaluate", ["--loads", "0.3", "abc"], ["--loads", "'abc'"]),
    ("evaluate", ["--episodes", "x"], ["--episodes", "'x'"]),
    ("evaluate", ["--devices", "a"], ["'devices'", "'a'"]),
    ("zoo", ["--input-size", "320,x"], ["--input-size", "'x'"]),
    ("zoo", ["--input-size", "320"], ["--input-size", "'320'"]),
    ("split", ["--solver", "nope", "x.json"], ["--solver", "'nope'"]),
    ("bench", ["split", "--devices", "2,x"], ["--devices", "'x'"]),
    ("bench", ["split", "--repeats", "x"], ["'repeats'", "'x'"]),
]
if HAS_TORCH:
    BAD += [("validate", ["--model", "vgg16", "--input-size", "a,b"], ["--input-size", "'a'"]),
            ("run", ["--model", "vgg16", "--devices", "q"], ["--devices", "'q'"])]


@pytest.mark.parametrize("command, argv, names", BAD)
def test_every_parse_error_is_one_line_naming_the_option_and_the_value(command, argv, names, capsys):
    assert cli.main([command, *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jaxsplit {command}: error: "), captured.err
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert captured.out == ""


def _parse(cls, argv):
    with deferred_checks():
        return options.parse(cls, argv, "jaxsplit x")


@pytest.mark.parametrize("cls, commas, spaces", [
    (train_cmd.TrainArgs,
     ["--eval-loads", "0.3,0.9", "--eval-policies", "myopic,free_now", "--models", "vgg16,resnet18", "--loads",
      "0.2,1.5", "--devices", "2,3", "--pair-levels", "0.5,1", "--hidden", "32,32"],
     ["--eval-loads", "0.3", "0.9", "--eval-policies", "myopic", "free_now", "--models", "vgg16", "resnet18",
      "--loads", "0.2", "1.5", "--devices", "2", "3", "--pair-levels", "0.5", "1", "--hidden", "32", "32"]),
    (sweep_cmd.SweepArgs,
     ["--eval-loads=0.3,0.9", "--baselines", "myopic,free_now", "--space", "lr=1e-4,1e-3", "--models", "vgg16,alexnet"],
     ["--eval-loads", "0.3", "0.9", "--baselines", "myopic", "free_now", "--space", "lr=1e-4,1e-3", "--models",
      "vgg16", "alexnet"]),
    (evaluate_cmd.EvaluateArgs,
     ["--loads", "0.3,0.9", "--policy", "myopic,free_now", "--models", "vgg16,alexnet", "--devices", "2,3",
      "--checkpoint", "a,b"],
     ["--loads", "0.3", "0.9", "--policy", "myopic", "free_now", "--models", "vgg16", "alexnet", "--devices", "2",
      "3", "--checkpoint", "a", "b"]),
    (zoo_cmd.ZooArgs, ["resnet18", "--input-size", "320,240"], ["resnet18", "--input-size", "320", "240"]),
])
def test_both_list_spellings_parse_alike(cls, commas, spaces):
    a, b = _parse(cls, commas), _parse(cls, spaces)
    assert a == b
    assert a != _parse(cls, [])


def test_both_list_spellings_give_the_same_values():
    args = _parse(sweep_cmd.SweepArgs, ["--eval-loads", "0.3,0.9", "1.2", "--baselines", "myopic", "free_now"])
    assert args.sweep.eval_loads == (0.3, 0.9, 1.2) and args.baselines == "myopic,free_now"
    args = _parse(zoo_cmd.ZooArgs, ["--input-size", "320", "240", "resnet18"])  # a positional after the list
    assert (args.name, args.input_size) == ("resnet18", (320, 240))
    bench = bench_cmd.parser().parse_args(options.spell_lists(["split", "--devices", "2", "4", "--quick"],
                                                              bench_cmd.LISTS, positionals=True))
    same = bench_cmd.parser().parse_args(["split", "--devices", "2,4", "--quick"])
    assert bench == same and bench_cmd.settings(bench)["split"]["devices"] == (2, 4)


@pytest.mark.slow
def test_both_list_spellings_give_the_same_result_through_evaluate(capsys):
    common = ["--policy", "whole_cluster", "--episodes", "2", "--requests", "8", "--json"]
    outputs = []
    for loads in (["0.3,0.9"], ["0.3", "0.9"]):
        assert cli.main(["evaluate", "--loads", *loads, *common]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and '"load": 0.9' in outputs[0]


@pytest.mark.parametrize("command, flags", [
    ("train", ["--eval-loads", "--eval-seed", "--models", "--lr", "--action", "--out"]),
    ("sweep", ["--eval-loads", "--eval-seed", "--baselines", "--space", "--lr"]),
    ("evaluate", ["--loads", "--episodes", "--requests", "--warmup", "--seed", "--policy"]),
])
def test_help_stays_complete(command, flags, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert f"usage: jaxsplit {command}" in out
    for flag in flags:
        assert flag in out, flag


def test_out_of_memory_is_one_line_with_the_size_asked_for(capsys):
    import jax
    import jax.numpy as jnp

    def body() -> int:  # XLA's own failure: a 4 TiB buffer on this machine
        jax.block_until_ready(jax.jit(lambda: jnp.ones((1 << 42,), jnp.uint8))())
        return 0

    assert cli.run_command("bench", body) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("jaxsplit bench: error: out of memory: a buffer of 4398.0 GB could not be allocated")
    assert "smaller settings" in err


def test_memory_error_is_one_line_and_other_runtime_errors_keep_their_traceback(capsys):
    def no_memory() -> int:
        raise MemoryError

    assert cli.run_command("split", no_memory) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxsplit split: error: out of memory; run it with smaller")

    def fault() -> int:
        raise RuntimeError("a fault of the program, not of its settings")

    with pytest.raises(RuntimeError, match="a fault of the program"):
        cli.run_command("split", fault)
