"""The planner (MODEL.md section 7) against a plain-Python evaluation of its formulas and against a
brute force over every segmentation, partition and integer split of small graphs."""

from __future__ import annotations

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxsplit import graph, latency, planner, zoo
from jaxsplit.layers import conv, linear, pool

enable_x64 = lambda: jax.enable_x64(True)  # noqa: E731


# ----------------------------------------------------------------------------- plain-Python section 7
def _live_sets(layers):
    """Cut points and the tensors held at each, recomputed from the layers' inputs (-1: model input)."""
    names = {l.name: i for i, l in enumerate(layers)}
    preds = []
    for i, l in enumerate(layers):
        if l.inputs is None:
            preds.append({i - 1})
        elif not l.inputs:
            preds.append({-1})
        else:
            preds.append({names[n] for n in l.inputs})
    cuts = {0: {-1}, len(layers): {len(layers) - 1}}
    for p in range(1, len(layers)):
        seen = {frozenset(j for j in pr if j < p) for pr in preds[p:]} - {frozenset()}
        if len(seen) == 1:
            cuts[p] = set(next(iter(seen)))
    return preds, cuts


def _tensor(layers, tensors):
    """(C, H, W) of a held tensor set (a sum if the channels agree, else a concatenation)."""
    shapes = [(layers[0].in_channels, layers[0].in_height, layers[0].in_width) if j < 0 else layers[j].output_shape
              for j in sorted(tensors)]
    cs = {s[0] for s in shapes}
    return (shapes[0][0] if len(cs) == 1 else sum(s[0] for s in shapes)), shapes[0][1], shapes[0][2]


def reference_time(layers, a, b, partition, split, devices, q=4.0):
    """max_i T_i of one segment [a, b) under ``split``; ``devices`` is a list of (F, B, tau, share)."""
    preds, cuts = _live_sets(layers)
    times = []
    start = 0
    for (f, bw, tau, share), n in zip(devices, split):
        if n == 0:
            continue
        fi, bi = share * f, share * bw
        if partition == "channels":
            l = layers[a]
            phi_c = 2 * l.out_height * l.out_width * l.in_channels * l.kernel[0] * l.kernel[1]
            t = 2 * tau + (l.in_height * l.in_width * l.in_channels * q + n * l.out_height * l.out_width * q) / bi \
                + n * phi_c / fi
        elif b - a == 1:
            l = layers[a]
            lo, hi = l.input_rows(start, n)
            t = 2 * tau + ((hi - lo) * l.in_width * l.in_channels * q + n * l.out_width * l.out_channels * q) / bi \
                + n * l.row_work / fi
        else:
            out_set = cuts[b]
            need = {j: [start, start + n] for j in out_set}
            work = 0.0
            for li in range(b - 1, a - 1, -1):
                if li not in need:
                    continue
                lo, hi = need[li]
                work += layers[li].row_work * (hi - lo)
                plo, phi = layers[li].input_rows(lo, hi - lo)
                for j in preds[li]:
                    key = j if j >= a else "in"
                    if key in need:
                        need[key] = [min(need[key][0], plo), max(need[key][1], phi)]
                    else:
                        need[key] = [plo, phi]
            for j in out_set:
                if j < a:  # an identity shortcut: rows of the input itself
                    need["in"] = [min(need.get("in", [start])[0], start), max(need.get("in", [0, start + n])[1],
                                                                              start + n)]
            c_in, _, w_in = _tensor(layers, cuts[a])
            c_out, _, w_out = _tensor(layers, out_set)
            lo, hi = need.get("in", [0, 0])
            t = 2 * tau + ((hi - lo) * w_in * c_in * q + n * w_out * c_out * q) / bi + work / fi
        times.append(t)
        start += n
    return max(times) if times else 0.0


def _compositions(total, parts):
    for cut in itertools.combinations(range(total + parts - 1), parts - 1):
        prev, out = -1, []
        for c in cut + (total + parts - 1,):
            out.append(c - prev - 1)
            prev = c
        yield out


def brute_force(layers, devices, q=4.0):
    """The least latency over every segmentation at cut points (single layers anywhere), every
    partition and every integer split, by enumeration."""
    preds, cuts = _live_sets(layers)
    count = len(layers)
    active = [d[3] > 0 for d in devices]

    def best_split(a, b, partition):
        total = layers[a].out_channels if partition == "channels" else _tensor(layers, cuts[b])[1] if b - a > 1 \
            else layers[a].out_height
        best = math.inf
        for split in _compositions(total, len(devices)):
            if any(s and not act for s, act in zip(split, active)):
                continue
            best = min(best, reference_time(layers, a, b, partition, split, devices, q))
        return best

    best = [0.0] + [math.inf] * count
    for b in range(1, count + 1):
        options = [best[b - 1] + best_split(b - 1, b, "rows")]
        l = layers[b - 1]
        if l.kind == "linear" or (l.kind == "conv" and l.groups == 1):
            options.append(best[b - 1] + best_split(b - 1, b, "channels"))
        for a in range(b - 1):
            if a in cuts and b in cuts and all(layers[j].kind != "linear" for j in range(a, b)):
                options.append(best[a] + best_split(a, b, "rows"))
        best[b] = min(options)
    return best[count]


# ----------------------------------------------------------------------------- small graphs
def _chain(d, h):
    k1, k2 = d(st.sampled_from([1, 2, 3])), d(st.sampled_from([1, 3]))
    s1 = d(st.sampled_from([1, 2]))
    c0, c1 = d(st.integers(1, 3)), d(st.integers(1, 3))
    w = d(st.integers(1, 3))
    a = conv(c0, c1, (k1, 1), h, w, (s1, 1), (k1 // 2, 0), name="a")
    b = conv(c1, 2, (k2, 1), a.out_height, w, 1, (k2 // 2, 0), name="b")
    p = pool("maxpool", 2, (2, 1), b.out_height, w, (d(st.sampled_from([1, 2])), 1), name="p") \
        if b.out_height >= 2 else conv(2, 2, 1, b.out_height, w, name="p")
    c = conv(2, d(st.integers(1, 3)), (3, 1), p.out_height, w, 1, (1, 0), name="c")
    return [a, b, p, c]


def _residual(d, h):
    w = d(st.integers(1, 2))
    c = d(st.integers(1, 3))
    s = d(st.sampled_from([1, 2]))
    a = conv(d(st.integers(1, 2)), c, (3, 1), h, w, 1, (1, 0), name="a")
    b = conv(c, c, (3, 1), h, w, (s, 1), (1, 0), name="b")
    k = d(st.sampled_from([1, 3]))
    cc = conv(c, c, (k, 1), b.out_height, w, 1, (k // 2, 0), name="c")
    sc = conv(c, c, 1, h, w, (s, 1), 0, name="d", inputs=("a",))
    e = conv(c, d(st.integers(1, 2)), (3, 1), b.out_height, w, 1, (1, 0), name="e", inputs=("c", "d"))
    return [a, b, cc, sc, e]


def _identity(d, h):
    w = d(st.integers(1, 2))
    c = d(st.integers(1, 3))
    k = d(st.sampled_from([1, 3]))
    a = conv(d(st.integers(1, 2)), c, (k, 1), h, w, 1, (k // 2, 0), name="a")
    b = conv(c, c, (3, 1), a.out_height, w, 1, (1, 0), name="b")
    x = conv(c, c, (3, 1), a.out_height, w, 1, (1, 0), name="x")
    y = conv(c, 2, (3, 1), a.out_height, w, (d(st.sampled_from([1, 2])), 1), (1, 0), name="y", inputs=("a", "x"))
    fc = linear(2, d(st.integers(1, 3)), name="fc")
    return [a, b, x, y, fc]


TOPOLOGIES = {"chain": _chain, "residual": _residual, "identity": _identity}


def _draw_devices(d, n=3):
    devices = []
    for i in range(n):
        f = d(st.floats(1e3, 1e5))
        bw = math.inf if i == 0 else d(st.floats(1e2, 1e5))
        tau = 0.0 if i == 0 else d(st.floats(0.0, 1e-2))
        share = d(st.sampled_from([0.0, 0.25, 0.5, 1.0])) if i else d(st.sampled_from([0.5, 1.0]))
        devices.append((f, bw, tau, share))
    return devices


_COMPILED: dict = {}


def _solve(layers, devices, rule):
    """Best plan under ``rule`` in float64 through one compiled program per topology."""
    with enable_x64():
        p = planner.Planner(layers, dtype=jnp.float64)
        key = (p.structure, rule)
        if key not in _COMPILED:
            _COMPILED[key] = jax.jit(lambda arr, c, s, p=p: p.with_arrays(arr).best_plan(c, s, rule))
        f, bw, tau, share = (np.array(v) for v in zip(*devices))
        cluster = latency.Cluster.create(f, bw, tau, dtype=jnp.float64)
        result = _COMPILED[key](p.arrays, cluster, jnp.asarray(share))
        return p, jax.device_get(result)


@pytest.mark.slow
@settings(max_examples=180)
@given(st.data())
def test_exact_best_plan_equals_brute_force(data):
    """With the exact rule inside each segment, the best plan is the optimum of every segmentation,
    partition and integer split, on chains, a residual block with a projection and one with an
    identity shortcut (3 x 180 drawn instances)."""
    d = data.draw
    for name, build in TOPOLOGIES.items():
        layers = build(d, d(st.integers(3, 6)))
        devices = _draw_devices(d)
        want = brute_force(layers, devices)
        p, got = _solve(layers, devices, "exact")
        assert float(got.latency) == pytest.approx(want, rel=1e-9), name
        # the plan it reports is worth what it says, by the plain-Python formulas
        total = sum(reference_time(layers, *seg["layers"], seg["partition"], seg["split"], devices)
                    for seg in p.segments(got))
        assert total == pytest.approx(float(got.latency), rel=1e-12)


@pytest.mark.slow
@settings(max_examples=60)
@given(st.data())
def test_closed_form_plan_is_worth_what_it_says_and_beats_per_layer(data):
    """The closed-form best plan's latency is the plain-Python evaluation of its segments, never below
    the brute-force optimum, and never above the per-layer closed form."""
    d = data.draw
    name = d(st.sampled_from(sorted(TOPOLOGIES)))
    layers = TOPOLOGIES[name](d, d(st.integers(3, 6)))
    devices = _draw_devices(d)
    p, got = _solve(layers, devices, "closed_form")
    total = sum(reference_time(layers, *seg["layers"], seg["partition"], seg["split"], devices)
                for seg in p.segments(got))
    assert total == pytest.approx(float(got.latency), rel=1e-12)
    assert float(got.latency) >= brute_force(layers, devices) * (1 - 1e-12)
    with enable_x64():
        f, bw, tau, share = (np.array(v) for v in zip(*devices))
        cluster = latency.Cluster.create(f, bw, tau, dtype=jnp.float64)
        key = (p.structure, "layer_plan")
        if key not in _COMPILED:
            _COMPILED[key] = jax.jit(lambda arr, c, s, p=p: p.with_arrays(arr).layer_plan(c, s))
        layer_plan = _COMPILED[key](p.arrays, cluster, jnp.asarray(share))
    assert float(got.latency) <= float(layer_plan.latency)


# ----------------------------------------------------------------------------- zoo models, float32
def _clusters(n_clusters, n, seed=0):
    rng = np.random.default_rng(seed)
    flops = rng.uniform(5e9, 1e11, (n_clusters, n))
    bw = rng.uniform(1.25e7, 2.5e8, (n_clusters, n))
    bw[:, 0] = np.inf
    tau = rng.uniform(2e-4, 5e-3, (n_clusters, n))
    tau[:, 0] = 0.0
    share = rng.choice([0.0, 0.3, 0.7, 1.0], (n_clusters, n))
    share[:, 0] = 1.0
    return latency.Cluster.create(flops, bw, tau), jnp.asarray(share, jnp.float32), (flops, bw, tau, share)


@pytest.fixture(scope="module")
def vgg_plans():
    """Best, per-layer and peers' plans of VGG-16 on 64 clusters of 4 devices (one compile each)."""
    p = planner.Planner(zoo.get("vgg16"))
    cluster, share, raw = _clusters(64, 4)
    run = lambda fn: jax.device_get(jax.jit(jax.vmap(fn))(cluster, share))  # noqa: E731
    return p, raw, {"fused": run(p.best_plan), "layer": run(p.layer_plan), "aofl": run(p.aofl_plan),
                    "deepthings": run(p.deepthings_plan)}


def test_fused_plan_never_slower_than_the_per_layer_closed_form(vgg_plans):
    _, _, plans = vgg_plans
    assert np.all(plans["fused"].latency <= plans["layer"].latency)
    # and it is a real gain on this model, not a tie: fusion pays for most clusters
    assert np.median(plans["layer"].latency / plans["fused"].latency) > 1.1


def test_one_layer_segments_are_section_3_bit_for_bit(vgg_plans):
    p, raw, plans = vgg_plans
    fused = plans["fused"]
    flops, bw, tau, share = raw
    count = p.num_layers
    rows = fused.splits[:, :count]  # (B, L, N)
    cluster = latency.Cluster.create(flops, bw, tau)
    want = jax.jit(jax.vmap(jax.vmap(latency.layer_latency, in_axes=(0, None, None, 0)),
                            in_axes=(None, 0, 0, 0)))(p.layer_arrays, cluster, jnp.asarray(share, jnp.float32),
                                                      jnp.asarray(rows))
    np.testing.assert_array_equal(fused.latencies[:, :count], np.asarray(want))


def test_plans_are_worth_what_they_say_by_plain_python(vgg_plans):
    """Every plan's segments, evaluated by the plain-Python formulas in float64, give the plan's
    float32 latency."""
    p, raw, plans = vgg_plans
    flops, bw, tau, share = raw
    layers = zoo.get("vgg16")
    for name, result in plans.items():
        for b in range(0, 64, 8):
            one = jax.tree.map(lambda a: a[b], result)
            devices = list(zip(flops[b], bw[b], tau[b], share[b]))
            total = sum(reference_time(layers, *seg["layers"], seg["partition"], seg["split"], devices)
                        for seg in p.segments(one))
            assert total == pytest.approx(float(one.latency), rel=2e-5), name


def test_peers_plans_are_never_ahead_of_the_best_plan_by_much(vgg_plans):
    _, _, plans = vgg_plans
    for peer in ("aofl", "deepthings"):
        assert np.all(plans["fused"].latency <= plans[peer].latency * 1.005), peer


def test_best_plan_does_not_retrace():
    p = planner.Planner(zoo.get("alexnet"))
    fn = jax.jit(chex.assert_max_traces(p.best_plan, n=1))
    cluster, share, _ = _clusters(3, 3, seed=1)
    for b in range(3):
        out = fn(jax.tree.map(lambda a: a[b], cluster), share[b])
        chex.assert_tree_all_finite(out.latency)


@pytest.mark.slow
def test_models_of_one_graph_share_a_program():
    small, large = planner.Planner(zoo.get("vgg16", (160, 160))), planner.Planner(zoo.get("vgg16", (224, 224)))
    assert small.structure == large.structure
    cluster, share, _ = _clusters(1, 3, seed=2)
    one = jax.tree.map(lambda a: a[0], cluster)
    shared = jax.jit(lambda arr, c, s: small.with_arrays(arr).best_plan(c, s).latency)
    assert float(shared(large.arrays, one, share[0])) == float(jax.jit(large.best_plan)(one, share[0]).latency)


@pytest.mark.parametrize("name", zoo.names())
def test_every_zoo_model_has_cut_points_between_whole_blocks(name):
    layers = zoo.get(name)
    g = graph.graph_of(layers)
    assert g.cuts[0] == 0 and g.cuts[-1] == len(layers)
    for p, live in zip(g.cuts, g.live):
        # the held tensor is read by the next layer whole
        if 0 < p < len(layers):
            assert set(live) == set(g.preds[p])


@pytest.mark.parametrize("bad, message", [
    ([conv(3, 4, 3, 8, 8, 1, 1, name="a"), conv(4, 4, 3, 8, 8, 1, 1, name="b", inputs=("zz",))],
     "layer 'b': field 'inputs' names 'zz', which is no layer"),
    ([conv(3, 4, 3, 8, 8, 1, 1, name="a", inputs=("b",)), conv(4, 4, 3, 8, 8, 1, 1, name="b")],
     "layer 'a': field 'inputs' names 'b', which is a later layer"),
    ([conv(3, 4, 3, 8, 8, 1, 1, name="a", inputs=("a",)), conv(4, 4, 3, 8, 8, 1, 1, name="b")],
     "layer 'a': field 'inputs' names 'a', which is a later layer"),
    ([conv(3, 4, 3, 8, 8, 2, 1, name="a"), conv(4, 4, 3, 8, 8, 1, 1, name="b")],
     "layer 'b': field 'inputs': 'a' is 4x4, the layer's input is 8x8"),
    ([conv(3, 4, 3, 8, 8, 1, 1, name="a"), conv(4, 4, 3, 8, 8, 1, 1, name="b", inputs=()),
      conv(4, 4, 3, 8, 8, 1, 1, name="c")],
     "layer 'a': its output is never read"),
])
def test_bad_graphs_are_named(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        graph.graph_of(bad)
