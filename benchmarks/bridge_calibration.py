"""Calibrate the latency model on real split runs and measure its prediction error.

For each model and number of processes N (rank 0 is the coordinator, device 0): a first run fits
every device's sustained FLOP/s (a 3x3 convolution repeated for 0.3 s on all ranks at once, as
pieces run), and the bandwidth and message latency of
every link (round trips with a piece's message pattern, least squares); the closed-form split is
then planned on the fitted cluster, run for real (torch.distributed, gloo, loopback, one torch thread
per process), and the measured time of every layer (scatter, compute, gather, at the coordinator)
is compared with MODEL.md section 3's prediction from the fitted parameters.

Run: python benchmarks/bridge_calibration.py [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import command, git_revision, machine, record  # noqa: E402


def one(model: str, n: int, size: int, repeats: int, timeout: float) -> dict:
    from jaxsplit import zoo
    from jaxsplit.bridge.distributed import RunSpec, launch_local
    from jaxsplit.bridge.planning import plan_rows
    from jaxsplit.bridge.run_cli import predict
    from jaxsplit.instance import Device

    layers = zoo.get(model, (size, size))
    equal, _ = plan_rows(layers, [Device(1e10)] * n, "equal")
    cal = launch_local(RunSpec(model, (size, size), tuple(map(tuple, equal.tolist())), timeout=timeout,
                               repeats=1, calibrate=True))
    devices = [Device(f, b, t) for f, b, t in zip(cal["flops"], cal["bandwidth"], cal["latency"])]
    rows, _ = plan_rows(layers, devices, "closed_form")
    res = launch_local(RunSpec(model, (size, size), tuple(map(tuple, rows.tolist())), timeout=timeout,
                               repeats=repeats))
    pred = np.asarray(predict(layers, rows, cal["flops"], cal["bandwidth"], cal["latency"], 4.0))
    meas = np.asarray(res["layer_times"])
    err = np.abs(pred - meas) / meas
    kinds = np.array([l.kind for l in layers])
    split = (rows > 0).sum(axis=1) > 1
    return {"model": model, "n": n, "cal": cal, "rows": rows, "pred": pred, "meas": meas, "err": err,
            "kinds": kinds, "split": split, "request_meas": res["request_time"], "request_pred": pred.sum(),
            "max_error": res["max_error"], "names": res["names"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (medians)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds any single wait may take")
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    ap.add_argument("--processes", nargs="+", type=int, default=[2, 3])
    args = ap.parse_args()
    import os

    load_before = os.getloadavg()[0]
    rows_md = []
    detail = []
    for model in args.models:
        for n in args.processes:
            t0 = time.time()
            r = one(model, n, args.size, args.repeats, args.timeout)
            conv = r["kinds"] == "conv"
            med = float(np.median(r["err"]))
            req = abs(r["request_pred"] - r["request_meas"]) / r["request_meas"]
            cal = r["cal"]
            rows_md.append(
                f"| {model} | {n} | {med:.0%} | {float(np.median(r['err'][conv])):.0%} | "
                f"{float(np.median(r['err'][~conv])) if (~conv).any() else float('nan'):.0%} | "
                f"{r['request_meas'] * 1e3:.1f} | {r['request_pred'] * 1e3:.1f} | {req:.0%} | "
                f"{', '.join(f'{f / 1e9:.0f}' for f in cal['flops'])} | "
                f"{', '.join(f'{b / 1e9:.2g}' for b in cal['bandwidth'][1:])} | "
                f"{', '.join(f'{t * 1e3:.2f}' for t in cal['latency'][1:])} | {r['max_error']:.1e} |")
            print(rows_md[-1], f"({time.time() - t0:.0f} s)", flush=True)
            worst = np.argsort(-r["err"])[:3]
            detail.append(f"{model} N={n}: worst layers " + "; ".join(
                f"{r['names'][i]} ({r['kinds'][i]}, rows {'/'.join(map(str, r['rows'][i]))}): measured "
                f"{r['meas'][i] * 1e3:.2f} ms, predicted {r['pred'][i] * 1e3:.2f} ms" for i in worst))
    body = "\n".join([
        "## PyTorch bridge: latency-model calibration on real split runs",
        "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}; torch gloo on loopback, one torch thread per process; revision {git_revision()}.",
        "",
        f"Input {args.size}x{args.size}, float32, closed-form split planned on the fitted cluster, median of "
        f"{args.repeats} timed requests after a warm-up. Error = |predicted - measured| / measured per layer.",
        "",
        "| model | N | median error (all layers) | conv layers | pool/linear layers | request measured (ms) | "
        "request predicted (ms) | request error | fitted GFLOP/s | fitted GB/s (workers) | fitted latency ms (workers) | output rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows_md,
        "",
        *[f"- {d}" for d in detail],
        "",
        f"Load average (1 min) of the machine: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"(other jobs shared its cores during the run).",
        "",
        "What explains the error: (1) pooling and linear layers: the model has one FLOP/s per device, fitted on "
        "a convolution, but PyTorch's CPU max pooling does about 1000x fewer of the model's pool operations per "
        "second and the large linear layers are memory-bound, so they are under-predicted by about 100%; "
        "(2) all processes share the machine's cores with each other and with other jobs, so a rank's compute "
        "rate depends on how many processes compute at the same time (the model's devices are independent), "
        "and the fitted rates and the measurements move with the load from run to run; "
        "(3) per-layer costs the model leaves out: the coordinator's BatchNorm, activations and residual adds "
        "(they cost nothing in the model), and waking a process that waited for a message, which dominates small "
        "layers. The goal of a median error of at most 25% per layer is met by the convolution layers of VGG-16 "
        "on 2 processes in some runs, not in general on this shared machine.",
    ])
    record("bridge_calibration", body)


if __name__ == "__main__":
    main()
