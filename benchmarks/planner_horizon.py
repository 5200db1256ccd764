"""How far ahead must an allocation policy look, and what would knowing the future add?

The lookahead planner of ``lookahead_imitation.py`` tries each of the 15 (cap, floor) rules of the
``clip_pairs`` action at every request and keeps the rule with the least total latency over the next
H requests, the rule held fixed along the way. This script runs variants of it on the same evaluation
episodes as the best constant share:

- ``H:S:g:u`` (unknown future): S sampled futures, the latency of the request h steps ahead weighted
  by g**h. g = 1 is the planner of ``lookahead_imitation.py``; g = 0.9 weighs the future as PPO with
  ``gamma = 0.9`` does, so its gain is about what that objective can reach with this action family.
- ``H:1:g:c`` (clairvoyant): one future, the real one (the arrival gaps and models that the episode
  will draw), which no causal policy knows. Its gain bounds what rule-held lookahead of this depth can
  find even with perfect forecasts.

    python benchmarks/planner_horizon.py           # records into RESULTS.md (about 6 minutes on 2 cores)
    python benchmarks/planner_horizon.py --quick   # small, prints only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import command, git_revision, load_average, machine, record  # noqa: E402
from lookahead_imitation import PAIRS, best_constant, paired_cells, rule_shares  # noqa: E402

from jaxsplit import envs  # noqa: E402
from jaxsplit.envs.evaluation import with_requests  # noqa: E402

DEFAULT_VARIANTS = "32:16:1:u,32:16:0.9:u,32:16:0.97:u,64:1:1:c,128:1:1:c"


def parse_variant(text: str) -> tuple[int, int, float, bool]:
    """``"H:S:g:u"`` or ``"H:1:g:c"`` -> (horizon, samples, weight g, clairvoyant)."""
    try:
        h, s, g, kind = text.split(":")
        horizon, samples, gamma = int(h), int(s), float(g)
    except ValueError:
        raise SystemExit(f"--variants: {text!r} is not H:S:g:u or H:1:g:c") from None
    if kind not in ("u", "c") or horizon < 1 or samples < 1 or not 0 < gamma <= 1:
        raise SystemExit(f"--variants: {text!r} needs H >= 1, S >= 1, 0 < g <= 1 and u or c")
    if kind == "c" and samples != 1:
        raise SystemExit(f"--variants: {text!r}: a clairvoyant planner has one future (S = 1)")
    return horizon, samples, gamma, kind == "c"


def make_planner(env, horizon: int, samples: int, gamma: float, clairvoyant: bool):
    """``act(key, t, obs, state, step_keys, params) -> shares (N,)``.

    ``step_keys`` (R + pad,) are the keys of the episode's own steps; only a clairvoyant planner
    reads them (those of steps t .. t + H - 1, which draw the real arrivals that follow)."""
    n = env.num_devices
    long_env = with_requests(env, 10**9)  # no auto-reset inside a lookahead
    weights = jnp.asarray(gamma, jnp.float32) ** jnp.arange(horizon, dtype=jnp.float32)

    def cost(state, obs, choice, keys, params):
        def body(carry, x):
            k, w = x
            o, s = carry
            o2, s2, _, _, _, info = long_env.step(k, s, rule_shares(o, choice, n), params)
            return (o2, s2), w * info["latency"]

        return jax.lax.scan(body, (obs, state), (keys, weights))[1].sum()

    def act(key, t, obs, state, step_keys, params):
        if clairvoyant:
            futures = jax.lax.dynamic_slice_in_dim(step_keys, t, horizon)[None]
        else:
            futures = jax.random.split(key, samples * horizon).reshape(samples, horizon)
        costs = jax.vmap(lambda c: jax.vmap(lambda ks: cost(state, obs, c, ks, params))(futures).mean())(
            jnp.arange(PAIRS.shape[0]))
        return rule_shares(obs, jnp.argmin(costs), n)

    return act


def run(env, params, act, loads, episodes: int, seed: int, pad: int) -> np.ndarray:
    """Per-request latency (loads, episodes, R) of ``act``, on the episodes that
    ``evaluation.run_episodes(..., seed)`` runs (same reset and step keys)."""
    R = env.requests

    def episode(key, p):
        k_reset, k_run = jax.random.split(key)
        obs, state = env.reset(k_reset, p)
        pairs = jax.vmap(jax.random.split)(jax.random.split(k_run, R))
        k_act, k_step = pairs[:, 0], pairs[:, 1]
        # a lookahead past the episode's last request draws arbitrary (but fixed) arrivals
        step_keys = jnp.concatenate([k_step, jax.random.split(jax.random.key(seed + 1), pad)])

        def body(carry, x):
            obs, state = carry
            t, ka, ks = x
            o2, s2, _, _, _, info = env.step(ks, state, act(ka, t, obs, state, step_keys, p), p)
            return (o2, s2), info["latency"]

        return jax.lax.scan(body, (obs, state), (jnp.arange(R), k_act, k_step))[1]

    loads_a = jnp.asarray(loads, env.dtype)
    many = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(loads),) + a.shape), params)
    many = many.replace(load_min=loads_a, load_max=loads_a)
    base = jax.random.key(seed)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(base, 0), e) for e in range(episodes)])
    fn = jax.jit(jax.vmap(jax.vmap(episode, in_axes=(0, None)), in_axes=(None, 0)))
    return np.asarray(fn(keys, many), np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loads", default="0.9,1.2")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help="comma-separated H:S:g:u (S sampled futures) or H:1:g:c (the real future)")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="tiny run, no RESULTS.md update")
    args = ap.parse_args()
    if args.quick:
        args.variants, args.episodes = "8:2:1:u,8:2:0.9:u,8:1:1:c", 3
    variants = [(v, parse_variant(v)) for v in args.variants.split(",")]
    loads = [float(v) for v in args.loads.split(",")]
    t0 = time.perf_counter()
    env, params = envs.make("alloc-v0", observation="table")
    n, warm = env.num_devices, int(0.1 * env.requests)
    pad = max(h for _, (h, *_rest) in variants)

    shares, best_const = best_constant(env, params, loads, args.episodes, args.seed, warm)
    # this script's runner must replay the very episodes of run_episodes
    c0 = shares[0]
    replay = run(env, params, lambda k, t, o, s, sk, p: jnp.full((n,), c0, jnp.float32), loads[:1],
                 args.episodes, args.seed, pad)[..., warm:].mean(-1)
    if not np.allclose(replay[0], best_const[0], rtol=1e-6):
        raise SystemExit("internal error: the planner runner does not replay run_episodes' episodes")

    head = ("| planner (H requests ahead, S futures, weight g**h) | " + " | ".join(f"rho = {r:g}" for r in loads)
            + " | s |\n|---|" + "---:|" * (len(loads) + 1))
    lines = [head, "| best constant share | " + " | ".join(
        f"{best_const[j].mean():.4f} (c = {shares[j]:.3g})" for j in range(len(loads))) + " | |"]
    for text, (h, s, g, clair) in variants:
        t1 = time.perf_counter()
        lat = run(env, params, make_planner(env, h, s, g, clair), loads, args.episodes, args.seed,
                  pad)[..., warm:].mean(-1)
        cells = paired_cells(lat, best_const)
        who = "the real future" if clair else f"S = {s}"
        lines.append(f"| H = {h}, {who}, g = {g:g} | " + " | ".join(cells) + f" | {time.perf_counter() - t1:.0f} |")
        print(lines[-1], flush=True)
    seconds = time.perf_counter() - t0
    table = "\n".join(lines)
    print(table)
    print(f"{seconds:.0f} s")
    if args.quick:
        return
    body = (f"### How far ahead to look, and what knowing the future adds (`benchmarks/planner_horizon.py`)\n\n"
            f"Command: `{command()}`  \nMachine: {machine()}; load average {load_average()}  \n"
            f"Revision: {git_revision()}; {seconds:.0f} s\n\n"
            f"The lookahead planner of the previous section (each of the 15 clip_pairs rules held for the next H "
            f"requests, least weighted total latency wins) in variants: S sampled futures, or the real future "
            f"of the episode (clairvoyant, which no policy can know); the latency h requests ahead weighted by "
            f"g**h (g = 0.9 weighs the future as PPO with gamma = 0.9 does). The same {args.episodes} episodes of "
            f"256 requests per load for every row (randomised clusters, seed {args.seed}, first 10% left out); "
            f"mean latency in seconds and, in brackets, the paired difference to the best constant share "
            f"(searched over 1, 1/2, 1/3, 1/4, 0.2, 0.1 on these episodes) with its 95% interval over episodes; "
            f"last column: seconds for the row.\n\n{table}\n")
    record("planner-horizon", body)


if __name__ == "__main__":
    main()
