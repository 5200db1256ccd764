"""Split solvers: exact against brute force, closed-form properties and gap, baselines, batching."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st
enable_x64 = lambda: jax.enable_x64(True)  # noqa: E731

from jaxsplit import reference, sampling, solvers
from jaxsplit.latency import Cluster, allocation_rates, device_times, layer_arrays, layer_latency, segment_time
from jaxsplit.layers import Layer, output_size


@st.composite
def small_layers(draw, max_out=10):
    """Layers of every kind whose output has at most ``max_out`` rows."""
    kind = draw(st.sampled_from(["conv", "conv", "maxpool", "avgpool", "linear"]))
    if kind == "linear":
        return Layer("linear", draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    if kind == "conv":
        d = (draw(st.integers(1, 3)), 1)
        p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 1)), draw(st.integers(0, 1)))
        g = draw(st.sampled_from([1, 2]))
        ceil = False
    else:
        d, g = (1, 1), 1
        p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[0] // 2)), 0, 0)
        ceil = draw(st.booleans())
    keff = d[0] * (k[0] - 1) + 1
    h = draw(st.integers(max(1, keff - p[0] - p[1]), 24))
    out = output_size(h, k[0], s[0], p[0], p[1], d[0], ceil)
    if out < 1 or out > max_out:
        h = max(1, keff - p[0] - p[1])
    c = draw(st.integers(1, 8)) * g
    w = draw(st.integers(k[1], 12))
    layer = Layer(kind, c, c if kind != "conv" else draw(st.integers(1, 4)) * g, k, s, p, d, g, ceil, h, w)
    if layer.out_height > max_out:
        return Layer("linear", 8, 8)
    return layer


@st.composite
def clusters(draw, max_devices=5):
    n = draw(st.integers(1, max_devices))
    local = draw(st.booleans())
    flops = [draw(st.floats(1e6, 1e9)) for _ in range(n)]
    bandwidth = [draw(st.floats(1e5, 1e8)) for _ in range(n)]
    latency = [draw(st.floats(0.0, 5e-3)) for _ in range(n)]
    share = [draw(st.sampled_from([0.0, 0.3, 1.0]) | st.floats(0.01, 1.0)) for _ in range(n)]
    if local:
        bandwidth[0], latency[0] = np.inf, 0.0
    if not any(a > 0 for a in share):
        share[draw(st.integers(0, n - 1))] = draw(st.floats(0.05, 1.0))
    return flops, bandwidth, latency, share


def as_arrays(layer, flops, bandwidth, latency, dtype):
    la = jax.tree.map(lambda a: a[0], layer_arrays([layer], dtype=dtype))
    return la, Cluster.create(flops, bandwidth, latency, dtype=dtype)


_exact = jax.jit(solvers.exact_split)
_closed = jax.jit(solvers.closed_form_split)


@pytest.mark.slow
@settings(max_examples=600)
@given(layer=small_layers(), cluster=clusters())
def test_exact_equals_brute_force(layer, cluster):
    flops, bandwidth, latency, share = cluster
    devices = list(zip(flops, bandwidth, latency))
    best, _ = reference.brute_force(layer, devices, share)
    with enable_x64():
        la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float64)
        rows = np.asarray(_exact(la, cl, jnp.asarray(share, jnp.float64)))
    assert rows.sum() == layer.out_height and (rows >= 0).all()
    assert all(r == 0 for r, a in zip(rows, share) if a == 0)
    got = reference.layer_latency(layer, devices, share, rows)
    assert got == pytest.approx(best, rel=1e-9)


def _most_rows(layer, device, share, start, budget, cap):
    """The reference's most rows from ``start`` that fit ``budget`` (T_i grows with the rows)."""
    if share <= 0:
        return 0
    n = 0
    while n < cap and reference.device_time(layer, *device, share, start, n + 1) <= budget:
        n += 1
    return n


_max_rows = jax.jit(solvers.max_rows)
_greedy = jax.jit(solvers.greedy_split)


@pytest.mark.slow
@settings(max_examples=300)
@given(layer=small_layers(max_out=30), cluster=clusters(), data=st.data())
def test_max_rows_is_the_most_rows_that_fit_the_budget(layer, cluster, data):
    """max_rows on its own (exact_split's fallback to the closed form would hide its errors)."""
    flops, bandwidth, latency, share = cluster
    n, total = len(flops), layer.out_height
    start = [data.draw(st.integers(0, total)) for _ in range(n)]
    cap = [total - s for s in start]
    devices = list(zip(flops, bandwidth, latency))
    # a budget anywhere up to 1.5x the time of the whole remainder on the first active device, or just
    # above or below the time of some number of rows on it (the boundaries)
    i = next(k for k, a in enumerate(share) if a > 0)
    full = reference.device_time(layer, *devices[i], share[i], start[i], max(cap[i], 1))
    m = data.draw(st.integers(1, max(cap[i], 1)))
    edge = reference.device_time(layer, *devices[i], share[i], start[i], m)
    budget = data.draw(st.floats(0.0, 1.5 * full) | st.sampled_from([edge * (1 + 1e-9), edge * (1 - 1e-9)]))
    with enable_x64():
        la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float64)
        rates = allocation_rates(cl, jnp.asarray(share, jnp.float64))
        got = np.asarray(_max_rows(la, rates, jnp.asarray(start), jnp.float64(budget), jnp.asarray(cap)))
    want = [_most_rows(layer, d, a, s0, budget, c) for d, a, s0, c in zip(devices, share, start, cap)]
    assert got.tolist() == want


def test_max_rows_at_the_borders():
    """max_rows where the segment starts in the top padding or reaches the bottom one (a segment from
    the first rows, large paddings, kernels smaller than the stride): the input rows read are
    clamped there, which random layers of the property test above rarely reach."""
    rng = np.random.default_rng(1)
    checked = 0
    with enable_x64():
        while checked < 1500:
            k, s, d = int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
            pt, pb = int(rng.integers(0, 4)), int(rng.integers(0, 4))
            h = int(rng.integers(max(1, d * (k - 1) + 1 - pt - pb), 30))
            out = output_size(h, k, s, pt, pb, d, False)
            if not 1 <= out <= 30:
                continue
            layer = Layer("conv", int(rng.integers(1, 9)), int(rng.integers(1, 9)), (k, 3), (s, 1), (pt, pb, 1, 1),
                          (d, 1), in_height=h, in_width=8)
            device = (10 ** rng.uniform(6, 9), 10 ** rng.uniform(5, 8), rng.uniform(0.0, 5e-3))
            share = float(rng.uniform(0.05, 1.0))
            start = int(rng.integers(0, min(out, 3))) if rng.random() < 0.5 else int(rng.integers(max(out - 3, 0), out))
            cap = out - start
            edge = reference.device_time(layer, *device, share, start, int(rng.integers(1, cap + 1)))
            whole = reference.device_time(layer, *device, share, start, cap)
            budget = edge * (1 + rng.choice([1e-9, -1e-9])) if rng.random() < 0.7 else rng.uniform(0, 1.5 * whole)
            la, cl = as_arrays(layer, [device[0]], [device[1]], [device[2]], jnp.float64)
            rates = allocation_rates(cl, jnp.asarray([share], jnp.float64))
            got = int(_max_rows(la, rates, jnp.asarray([start]), jnp.float64(budget), jnp.asarray([cap]))[0])
            assert got == _most_rows(layer, device, share, start, budget, cap), (layer, device, share, start, budget)
            checked += 1


@settings(max_examples=200)
@given(layer=small_layers(), cluster=clusters())
def test_greedy_split_is_feasible_exactly_from_the_optimum_on(layer, cluster):
    """The greedy pass on its own: a budget just above the brute-force optimum is met (with a split
    that meets it), one just below is not."""
    flops, bandwidth, latency, share = cluster
    devices = list(zip(flops, bandwidth, latency))
    best, _ = reference.brute_force(layer, devices, share)
    with enable_x64():
        la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float64)
        rates = allocation_rates(cl, jnp.asarray(share, jnp.float64))
        ok_above, rows = _greedy(la, rates, jnp.float64(best * (1 + 1e-9)))
        ok_below, _ = _greedy(la, rates, jnp.float64(best * (1 - 1e-9)))
    rows = np.asarray(rows)
    assert bool(ok_above) and not bool(ok_below)
    assert rows.sum() == layer.out_height
    assert reference.layer_latency(layer, devices, share, rows) <= best * (1 + 1e-9)


@pytest.mark.slow
def test_exact_beats_the_closed_form_where_it_is_suboptimal_with_the_brute_force_optimum():
    """Where the closed form is not optimal, exact_split's search (not its fallback to the closed form's
    rows) must find the optimum: such instances must turn up, and exact must equal brute force there."""
    rng = np.random.default_rng(13)
    layers = []
    while len(layers) < 5000:  # 3xk convolutions of at most 10 output rows, the brute force's size
        k, s, pt, pb = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(0, 3)), int(rng.integers(0, 3))
        h = int(rng.integers(max(1, k - pt - pb), 25))
        if 1 <= output_size(h, k, s, pt, pb, 1, False) <= 10:
            layers.append(Layer("conv", int(rng.integers(1, 9)), int(rng.integers(1, 9)), (k, 3), (s, 1),
                                (pt, pb, 1, 1), in_height=h, in_width=int(rng.integers(k, 13))))
    f, b = 10 ** rng.uniform(6, 9, (5000, 4)), 10 ** rng.uniform(5, 8, (5000, 4))
    t = rng.uniform(0.0, 5e-3, (5000, 4))
    a = rng.choice([0.3, 0.5, 1.0], (5000, 4)) * rng.uniform(0.2, 1.0, (5000, 4))
    with enable_x64():
        la, cl = layer_arrays(layers, dtype=jnp.float64), Cluster.create(f, b, t, dtype=jnp.float64)
        lat = jax.jit(jax.vmap(layer_latency))
        closed = np.asarray(lat(la, cl, a, jax.jit(jax.vmap(solvers.closed_form_split))(la, cl, a)))
        rows = np.asarray(jax.jit(jax.vmap(solvers.exact_split))(la, cl, a))
        exact = np.asarray(lat(la, cl, a, rows))
    assert (exact <= closed * (1 + 1e-12)).all()
    better = np.flatnonzero(exact < closed * (1 - 1e-9))
    assert len(better) >= 10, len(better)  # a few dozen here
    for i in better:
        devices = list(zip(np.asarray(cl.flops[i]), np.asarray(cl.bandwidth[i]), np.asarray(cl.latency[i])))
        best, _ = reference.brute_force(layers[i], devices, list(a[i]))
        assert reference.layer_latency(layers[i], devices, list(a[i]), rows[i]) == pytest.approx(best, rel=1e-9)


def _bits(x, dtype):
    """The bit pattern of floats ``x`` of ``dtype`` as signed integers (positive floats order like it)."""
    return np.asarray(x, dtype).view(np.int32 if np.dtype(dtype) == np.float32 else np.int64).astype(np.int64)


def _conv_layers(rng, n, max_h, max_out):
    """``n`` random 3xk convolutions of at most ``max_out`` output rows."""
    layers = []
    while len(layers) < n:
        k, s, pt, pb = int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(0, 4)), int(rng.integers(0, 4))
        h = int(rng.integers(max(1, k - pt - pb), max_h))
        if 1 <= output_size(h, k, s, pt, pb, 1, False) <= max_out:
            layers.append(Layer("conv", int(rng.integers(1, 65)), int(rng.integers(1, 65)), (k, 3), (s, 1),
                                (pt, pb, 1, 1), in_height=h, in_width=int(rng.integers(k, 60))))
    return layers


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_max_rows_at_a_budget_equal_to_a_segments_time(dtype):
    """A budget of exactly T(m) (and the floats next to it) for some m rows: max_rows' affine estimate
    lands a row short or over on about a quarter of these, and its two corrections against
    segment_time must bring every answer to the most rows that fit, in the solver's own arithmetic.
    (Budgets 1e-9 away, as above, never meet the corrections.)"""
    rng = np.random.default_rng(5)
    n = 4000
    layers = _conv_layers(rng, n, 300, 200)
    out = np.array([layer.out_height for layer in layers])
    start = rng.integers(0, out)
    cap = out - start
    m = rng.integers(1, cap + 1)
    f, b = 10 ** rng.uniform(6, 10, (n, 1)), 10 ** rng.uniform(5, 9, (n, 1))
    t, a = rng.uniform(0.0, 5e-3, (n, 1)), rng.uniform(0.05, 1.0, (n, 1))
    seg = jax.jit(jax.vmap(segment_time))
    most = jax.jit(jax.vmap(solvers.max_rows))
    with jax.enable_x64(dtype == jnp.float64):
        la, cl = layer_arrays(layers, dtype=dtype), Cluster.create(f, b, t, dtype=dtype)
        rates = jax.vmap(allocation_rates)(cl, jnp.asarray(a, dtype))
        start_, cap_ = jnp.asarray(start[:, None]), jnp.asarray(cap[:, None])
        edge = np.asarray(seg(la, rates, start_, jnp.asarray(m[:, None])))[:, 0]
        for shift in (-1, 0, 1):
            bits = _bits(edge, dtype) + shift
            budget = bits.astype(np.int32 if dtype == jnp.float32 else np.int64).view(np.dtype(dtype))
            got = np.asarray(most(la, rates, start_, jnp.asarray(budget), cap_))[:, 0]
            t_got = np.asarray(seg(la, rates, start_, jnp.asarray(got[:, None])))[:, 0]
            t_next = np.asarray(seg(la, rates, start_, jnp.asarray(got[:, None] + 1)))[:, 0]
            assert ((got >= 0) & (got <= cap)).all()
            assert ((got == 0) | (t_got <= budget)).all(), f"{np.sum(t_got > budget)} answers overrun the budget"
            assert ((got == cap) | (t_next > budget)).all(), f"{np.sum(t_next <= budget)} answers leave a row that fits"
            if shift == 0:
                assert (got == m).all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_exact_tells_near_ties_apart(dtype):
    """Two devices the same but for a few ulps to 1e-4 of one rate: splits whose latencies differ by a
    few ulps. exact_split must be within 2 ulps of the best of every split (the brute force, in the
    same dtype: one program and another can round the same sum an ulp apart), never worse than the
    closed form, and such near ties must be among the instances where the closed form is not optimal."""
    rng = np.random.default_rng(17)
    n = 20000
    layers = _conv_layers(rng, n, 25, 10)
    f, b = 10 ** rng.uniform(6, 9, (n, 3)), 10 ** rng.uniform(5, 8, (n, 3))
    t, a = rng.uniform(0.0, 5e-3, (n, 3)), rng.uniform(0.2, 1.0, (n, 3))
    eps = np.finfo(np.dtype(dtype)).eps
    rel = np.minimum(rng.choice([1, 2, 4, 16, 256, 2**12, 2**16, 2**20], n) * eps, 1e-4) * rng.choice([-1, 1], n)
    f[:, 1], b[:, 1], t[:, 1], a[:, 1] = f[:, 0], b[:, 0], t[:, 0], a[:, 0]
    field = rng.integers(0, 3, n)  # which of device 1's flops, bandwidth or share is off by rel
    for col, arr in enumerate((f, b, a)):
        arr[field == col, 1] *= 1 + rel[field == col]
    # every split of every instance: device 0's rows, device 1's, the rest on device 2
    owner, splits = [], []
    for i, layer in enumerate(layers):
        h = layer.out_height
        for n0 in range(h + 1):
            for n1 in range(h + 1 - n0):
                owner.append(i)
                splits.append((n0, n1, h - n0 - n1))
    owner, splits = np.asarray(owner), np.asarray(splits)
    lat = jax.jit(jax.vmap(layer_latency))
    with jax.enable_x64(dtype == jnp.float64):
        la, cl, share = layer_arrays(layers, dtype=dtype), Cluster.create(f, b, t, dtype=dtype), jnp.asarray(a, dtype)
        rows = np.asarray(jax.jit(jax.vmap(solvers.exact_split))(la, cl, share))
        closed = np.asarray(jax.jit(jax.vmap(solvers.closed_form_split))(la, cl, share))
        exact_t, closed_t = np.asarray(lat(la, cl, share, rows)), np.asarray(lat(la, cl, share, closed))
        pick = lambda tree: jax.tree.map(lambda v: v[owner], tree)  # noqa: E731
        every = np.asarray(lat(pick(la), pick(cl), share[owner], jnp.asarray(splits)))
    best = np.full(n, np.inf, every.dtype)
    np.minimum.at(best, owner, every)
    assert (rows.sum(axis=1) == [layer.out_height for layer in layers]).all()
    assert (exact_t <= closed_t).all(), f"{np.sum(exact_t > closed_t)} exact splits worse than the closed form"
    off = _bits(exact_t, dtype) - _bits(best, dtype)
    assert (off <= 2).all(), f"{np.sum(off > 2)} exact splits more than 2 ulps above the optimum (at most {off.max()})"
    gap = _bits(closed_t, dtype) - _bits(best, dtype)
    assert np.sum((gap > 2) & (gap <= 64)) >= 5, np.sum((gap > 2) & (gap <= 64))  # 15 of each dtype here


@pytest.mark.slow
@settings(max_examples=300)
@given(layer=small_layers(max_out=200), cluster=clusters(max_devices=8))
def test_closed_form_float32_rows_are_valid(layer, cluster):
    flops, bandwidth, latency, share = cluster
    la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float32)
    a = jnp.asarray(share, jnp.float32)
    for solver in (_closed, _exact):
        rows = np.asarray(solver(la, cl, a))
        assert rows.dtype == np.int32
        assert rows.sum() == layer.out_height and (rows >= 0).all()
        assert all(r == 0 for r, s in zip(rows, share) if s == 0)
        t = float(layer_latency(la, cl, a, jnp.asarray(rows)))
        assert np.isfinite(t) and t > 0


def test_plain_closed_form_matches_numpy_reference():
    rng = np.random.default_rng(3)
    plain = jax.jit(solvers.closed_form_plain)
    checked = 0
    with enable_x64():
        for _ in range(300):
            n = int(rng.integers(1, 9))
            layer = sampling.random_layer(rng, 64, 64)
            f, b, t, a = sampling.random_cluster(rng, n)
            la, cl = as_arrays(layer, f, b, t, jnp.float64)
            got = np.asarray(plain(la, cl, jnp.asarray(a)))
            want = reference.closed_form(layer, list(zip(f, b, t)), a)
            # Ties in the rounding may be broken differently; the latency must agree.
            t_got = reference.layer_latency(layer, list(zip(f, b, t)), a, got)
            t_want = reference.layer_latency(layer, list(zip(f, b, t)), a, want)
            assert t_got == pytest.approx(t_want, rel=1e-9)
            checked += int((got == want).all())
    assert checked > 250


def gaps(name, batch=4000, n=8, seed=7):
    rng = np.random.default_rng(seed)
    la, cl, a, _ = sampling.random_batch(rng, batch, n)
    lat = jax.jit(jax.vmap(layer_latency))
    ex = np.asarray(lat(la, cl, a, solvers.solve_batch("exact", la, cl, jnp.asarray(a))), np.float64)
    got = np.asarray(lat(la, cl, a, solvers.solve_batch(name, la, cl, jnp.asarray(a))), np.float64)
    return got / ex - 1.0


@pytest.mark.slow
def test_closed_form_gap_to_exact():
    gap = gaps("closed_form")
    assert gap.min() >= -1e-6  # exact is optimal
    assert np.median(gap) <= 1e-6
    assert np.quantile(gap, 0.99) <= 0.01


def test_refinement_never_worse_than_plain_rounding():
    rng = np.random.default_rng(11)
    la, cl, a, _ = sampling.random_batch(rng, 6000, 4)
    lat = jax.jit(jax.vmap(layer_latency))
    plain = lat(la, cl, a, jax.jit(jax.vmap(solvers.closed_form_plain))(la, cl, a))
    refined = lat(la, cl, a, solvers.solve_batch("closed_form", la, cl, jnp.asarray(a)))
    assert (np.asarray(refined) <= np.asarray(plain) * (1 + 1e-6)).all()
    assert np.mean(np.asarray(refined)) < np.mean(np.asarray(plain))


def test_every_solver_is_registered_under_the_name_the_command_line_takes():
    """The solver registry is what ``--solver`` offers (``jaxsplit split``), and the solvers run on
    the host are some of them."""
    import typing

    from jaxsplit.commands.split import SolverName

    assert sorted(solvers.SOLVERS) == sorted(typing.get_args(SolverName))
    assert solvers.HOST_SOLVERS == {"lp"} and solvers.get_solver("lp") is solvers.lp_split


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_every_solver_gives_valid_rows(name):
    rng = np.random.default_rng(5)
    batch = 40 if name == "lp" else 500
    la, cl, a, layers = sampling.random_batch(rng, batch, 5)
    rows = np.asarray(solvers.solve_batch(name, la, cl, jnp.asarray(a)))
    assert rows.shape == (batch, 5)
    assert (rows.sum(1) == np.asarray(la.out_height)).all()
    assert (rows >= 0).all() and (rows[a == 0] == 0).all()
    lat = np.asarray(jax.jit(jax.vmap(layer_latency))(la, cl, a, rows))
    assert np.isfinite(lat).all()
    if name != "exact":
        ex = np.asarray(jax.jit(jax.vmap(layer_latency))(la, cl, a, solvers.solve_batch("exact", la, cl, jnp.asarray(a))))
        assert (lat >= ex * (1 - 1e-6)).all()


def test_single_picks_the_best_device():
    layer = Layer("conv", 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), in_height=16, in_width=16)
    la, cl = as_arrays(layer, [1e9, 8e9, 2e9], [np.inf, 1e12, 1e12], [0.0, 0.0, 0.0], jnp.float32)
    rows = np.asarray(solvers.single_split(la, cl, jnp.asarray([1.0, 1.0, 1.0])))
    assert rows.tolist() == [0, 16, 0]
    rows = np.asarray(solvers.single_split(la, cl, jnp.asarray([1.0, 0.0, 1.0])))
    assert rows.tolist() == [0, 0, 16]


def test_equal_and_proportional():
    layer = Layer("conv", 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), in_height=10, in_width=8)
    la, cl = as_arrays(layer, [1e9, 3e9, 1e9, 5e9], [np.inf] * 4, [0.0] * 4, jnp.float32)
    share = jnp.asarray([1.0, 1.0, 0.0, 1.0])
    assert np.asarray(solvers.equal_split(la, cl, share)).tolist() == [4, 3, 0, 3]
    assert np.asarray(solvers.proportional_split(la, cl, share)).tolist() == [1, 3, 0, 6]


def test_proportional_split_is_the_largest_remainder_of_the_exact_shares():
    """MoDNN's rule against exact rational arithmetic: n_i = floor(H f_i / sum f), then one more row to
    each of the devices with the largest fractional parts (the first on equal parts), f_i = a_i F_i.
    Capacities span 1e3 to 3e13 FLOP/s;
    about half the instances repeat a device, whose fractional parts then tie exactly. Instances whose
    parts come within float32 round-off of each other or of an integer are left out."""
    from fractions import Fraction

    rng = np.random.default_rng(11)
    batch, n = 3000, 6
    la, _, _, _ = sampling.random_batch(rng, batch, n, max_height=600)
    scale = 10.0 ** rng.uniform(3, 12, (batch, 1))  # an instance's devices within 30x of each other
    flops = (scale * 10.0 ** rng.uniform(0, 1.5, (batch, n))).astype(np.float32)
    share = rng.choice([0.0, 1.0, 0.5, 0.25], (batch, n)) * rng.choice([1.0, rng.uniform(0.01, 1.0)], (batch, n))
    share = share.astype(np.float32)
    share[np.arange(batch), rng.integers(0, n, batch)] = 1.0
    twin = rng.random(batch) < 0.5  # device j repeats device i: the same f, an exact tie
    i, j = rng.integers(0, n, batch), rng.integers(0, n, batch)
    flops[twin, j[twin]], share[twin, j[twin]] = flops[twin, i[twin]], share[twin, i[twin]]
    cl = Cluster(jnp.asarray(flops), jnp.full((batch, n), np.inf, np.float32), jnp.zeros((batch, n), np.float32))
    got = np.asarray(jax.jit(jax.vmap(solvers.proportional_split))(la, cl, jnp.asarray(share)))
    heights = np.asarray(la.out_height)
    f = share * flops  # float32 products, as the solver forms them
    checked = ties = 0
    for b in range(batch):
        total, active = int(heights[b]), f[b] > 0
        exact = [Fraction(float(v)) for v in f[b]]
        whole = sum(v for v, on in zip(exact, active) if on)
        ideal = [v * total / whole if on else Fraction(0) for v, on in zip(exact, active)]
        frac = np.array([float(v - int(v)) for v in ideal])
        margin = 4e-6 * total  # float32 round-off of f / sum(f) * H, with room
        parts = sorted({(float(exact[k]), frac[k]) for k in np.flatnonzero(active)}, key=lambda p: p[1])
        apart = all(b2[1] - a2[1] > 2 * margin for a2, b2 in zip(parts, parts[1:]))
        if not apart or any(min(p[1], 1 - p[1]) < margin for p in parts if p[1] > 0) or total < 2:
            continue
        want = np.array([int(v) for v in ideal])
        order = sorted(np.flatnonzero(active), key=lambda k: (-frac[k], k))
        want[order[:total - want.sum()]] += 1
        checked += 1
        ties += len(parts) < active.sum()
        assert got[b].tolist() == want.tolist(), (b, total, f[b].tolist())
    assert checked > 2000 and ties > 600, (checked, ties)  # 2,450 and 792 here


@pytest.mark.parametrize("flops, share, height, want", [
    ([3e9, 1e9, 2e9], [1.0, 1.0, 0.0], 6, [5, 1, 0]),  # ideal 4.5, 1.5: the tie goes to the first
    ([2e9, 3e9, 1e9], [0.0, 1.0, 1.0], 2, [0, 2, 0]),  # ideal 1.5, 0.5
    ([3e9, 5e9, 4e9, 1e9], [1.0, 0.0, 0.0, 1.0], 10, [8, 0, 0, 2]),  # ideal 7.5, 2.5
])
def test_proportional_split_gives_an_absent_device_no_weight(flops, share, height, want):
    """Absent devices (share 0) take no part in the proportions, in float64 where a weight as small
    as 1 FLOP/s beside 4e9 would move a fractional part by 1e-9 and turn a tie between devices of
    different capacity (parts 0.5 and 0.5) the other way."""
    layer = Layer("conv", 4, 4, (1, 1), (1, 1), (0, 0, 0, 0), in_height=height, in_width=8)
    with enable_x64():
        la, cl = as_arrays(layer, flops, [np.inf] * len(flops), [0.0] * len(flops), jnp.float64)
        rows = solvers.proportional_split(la, cl, jnp.asarray(share, jnp.float64))
    assert np.asarray(rows).tolist() == want


@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_every_solver_puts_every_row_on_a_lone_device(name):
    """A cluster of one device (the coordinator alone, or one remote device) in the default float32."""
    rng = np.random.default_rng(12)
    la, cl, a, _ = sampling.random_batch(rng, 8, 1)
    cl = Cluster(cl.flops, np.where(np.arange(8)[:, None] % 2, cl.bandwidth, np.inf).astype(np.float32),
                 cl.latency)
    a = np.maximum(a, np.float32(0.5))
    rows = np.asarray(solvers.solve_batch(name, la, cl, jnp.asarray(a)))
    assert rows[:, 0].tolist() == np.asarray(la.out_height).tolist()


def test_rebalance_reaches_its_fixed_point_on_tall_layers():
    """Tall layers (200 to 2,000 rows) on clusters whose devices differ up to 1,000x, where EdgeLD's
    walk from the equal split takes hundreds of moves: no move of a row from the slowest device to
    the fastest other active one lowers the latency of the split returned."""
    rng = np.random.default_rng(13)
    batch, n = 64, 5
    with enable_x64():
        layers = [Layer("conv", 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), in_height=int(h), in_width=16)
                  for h in rng.integers(200, 2001, batch)]
        la = layer_arrays(layers, dtype=jnp.float64)
        flops = 1e9 * 10.0 ** rng.uniform(0, 3, (batch, n))
        bandwidth = np.full((batch, n), np.inf)
        cl = Cluster(jnp.asarray(flops), jnp.asarray(bandwidth), jnp.zeros((batch, n)))
        share = np.where(rng.random((batch, n)) < 0.8, 1.0, 0.0)
        share[:, 0] = 1.0
        a = jnp.asarray(share)
        rows = np.asarray(jax.jit(jax.vmap(solvers.rebalance_split))(la, cl, a))
        times = jax.jit(jax.vmap(lambda l, c, s, r: device_times(l, allocation_rates(c, s), r)))
        t = np.asarray(times(la, cl, a, jnp.asarray(rows)))
        slow = np.argmax(t, axis=1)
        others = np.where((share > 0) & (np.arange(n) != slow[:, None]), t, np.inf)
        fast = np.argmin(others, axis=1)
        cand = rows.copy()
        cand[np.arange(batch), slow] -= 1
        cand[np.arange(batch), fast] += 1
        cand_max = np.asarray(times(la, cl, a, jnp.asarray(cand))).max(axis=1)
        movable = (rows[np.arange(batch), slow] > 0) & np.isfinite(others.min(axis=1))
        equal = np.asarray(jax.vmap(solvers.equal_split)(la, cl, a))
    assert (rows.sum(1) == np.asarray(la.out_height)).all()
    assert np.abs(rows - equal).sum(1).max() > 2 * 300  # hundreds of moves were needed
    assert not (movable & (cand_max < t.max(axis=1) * (1 - 1e-12))).any()


def test_batch_equals_per_instance_and_no_retrace():
    rng = np.random.default_rng(2)
    la, cl, a, _ = sampling.random_batch(rng, 64, 4)
    def batched(layer, cluster, share):
        return jax.vmap(solvers.closed_form_split)(layer, cluster, share)

    fn = jax.jit(chex.assert_max_traces(batched, n=1))
    batch = np.asarray(fn(la, cl, jnp.asarray(a)))
    for i in range(0, 64, 7):
        one = jax.tree.map(lambda x: jnp.asarray(x[i]), (la, cl))
        assert (np.asarray(_closed(one[0], one[1], jnp.asarray(a[i]))) == batch[i]).all()
    la2, cl2, a2, _ = sampling.random_batch(rng, 64, 4)
    fn(la2, cl2, jnp.asarray(a2))
    fn(la, cl, jnp.asarray(a))  # same shapes: no new trace (assert_max_traces raises otherwise)


@pytest.mark.slow
def test_local_coordinator_and_zero_share_never_nan():
    layer = Layer("conv", 3, 8, (3, 3), (1, 1), (1, 1, 1, 1), in_height=32, in_width=32)
    la, cl = as_arrays(layer, [1e9, 1e9, 1e9], [np.inf, 1e7, np.inf], [0.0, 1e-3, 0.0], jnp.float32)
    for share in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1e-6], [1.0, 1.0, 1.0]):
        for name in ("closed_form", "exact", "single", "equal", "proportional", "rebalance"):
            rows = solvers.SOLVERS[name](la, cl, jnp.asarray(share))
            t = layer_latency(la, cl, jnp.asarray(share), rows)
            assert np.isfinite(float(t)), (name, share)
            assert int(rows.sum()) == 32


def test_device_times_match_reference():
    rng = np.random.default_rng(9)
    with enable_x64():
        for _ in range(200):
            n = int(rng.integers(1, 6))
            layer = sampling.random_layer(rng, 40, 16)
            f, b, t, a = sampling.random_cluster(rng, n)
            rows = np.zeros(n, int)
            active = np.flatnonzero(a > 0)
            cuts = np.sort(rng.integers(0, layer.out_height + 1, len(active) - 1))
            rows[active] = np.diff(np.concatenate([[0], cuts, [layer.out_height]]))
            la, cl = as_arrays(layer, f, b, t, jnp.float64)
            got = float(layer_latency(la, cl, jnp.asarray(a), jnp.asarray(rows)))
            want = reference.layer_latency(layer, list(zip(f, b, t)), a, rows)
            assert got == pytest.approx(want, rel=1e-12)


def _affine_costs(layer, flops, bandwidth, latency, share):
    """MODEL.md's per-device alpha_i (s) and beta_i (s per row) for one layer, numpy float64 (N,)."""
    f, b, tau, a = (np.asarray(v, np.float64) for v in (flops, bandwidth, latency, share))
    active = a > 0
    safe = np.where(active, a, 1.0)
    spb = np.where(active & np.isfinite(b), 1.0 / (safe * b), 0.0)
    in_row = layer.in_width * layer.in_channels * 4.0 * spb
    out_row = layer.out_width * layer.out_channels * 4.0 * spb
    sh, keff = layer.stride[0], layer.kernel_extent[0]
    beta = sh * in_row + out_row + layer.row_work / (safe * f)
    alpha = 2 * tau + max(keff - sh, 0) * in_row
    return alpha, beta, active


@settings(max_examples=80)
@given(layer=small_layers(max_out=60), cluster=clusters())
# a 1x1 kernel of stride 2 reads no halo: a halo of one input row would tip device 1's optimum from
# 1.02 rows to 0.998
@example(layer=Layer("conv", 2, 4, (1, 1), (2, 1), (0, 0, 0, 0), in_height=13, in_width=5),
         cluster=([1.31e6, 4.45e6, 2.72e7], [np.inf, 6.82e5, 4.44e7], [0.0, 2.91e-4, 3.24e-3], [1.0, 1.0, 1.0]))
# two absent devices: given a row of room each, the LP would park rows there at no cost
@example(layer=Layer("conv", 5, 4, (3, 1), (2, 1), (0, 0, 0, 0), in_height=22, in_width=11),
         cluster=([3.899e8, 8.782e8, 7.441e8, 2.794e6], [8.277e7, 4.675e7, 2.932e7, 2.754e6],
                  [1.162e-3, 4.009e-3, 4.618e-3, 1.331e-3], [0.0, 0.0, 0.4483, 1.0]))
def test_lp_split_is_the_rounded_lp_optimum(layer, cluster):
    """The LP of min T s.t. T >= (alpha_i / H + beta_i) n_i, sum n_i = H has the optimum
    n_i = H / (c_i sum_j 1 / c_j) with c_i = alpha_i / H + beta_i (every active device finishes at
    the same T); the split floors it and hands the remaining rows one by one to the device whose
    next row costs least."""
    flops, bandwidth, latency, share = cluster
    alpha, beta, active = _affine_costs(layer, flops, bandwidth, latency, share)
    total = layer.out_height
    c = np.where(active, alpha / total + beta, np.inf)
    optimum = np.where(active, total / (c * np.sum(1.0 / c[active])), 0.0)
    assume(np.all(np.abs(optimum - np.round(optimum))[active] > 1e-6) or total == 1)  # floor well defined (absent: 0)
    want = np.floor(optimum + 1e-9).astype(int)
    for _ in range(total - want.sum()):
        want[int(np.argmin(np.where(active, alpha + beta * (want + 1), np.inf)))] += 1
    with enable_x64():
        la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float64)
        rows = solvers.lp_split(la, cl, jnp.asarray(share, jnp.float64))
    assert rows.tolist() == want.tolist()


def test_lp_split_keeps_an_lp_optimum_of_whole_rows():
    """Where the LP optimum is a whole number of rows on every device it is the split, unchanged:
    no row is floored away and handed out again, and none is added and taken back. Two devices with
    infinite bandwidth: the local one at 1 ms a row, the other at 0.5 ms a row after 4.5 ms of
    messages; on 3 rows c = (1 ms, 1.5 ms + 0.5 ms), so the optimum is n = (2, 1)."""
    layer = Layer("conv", 4, 4, (1, 1), (1, 1), (0, 0, 0, 0), in_height=3, in_width=8)
    work = layer.row_work  # FLOP per output row
    with enable_x64():
        la, cl = as_arrays(layer, [work / 1e-3, work / 0.5e-3], [np.inf, np.inf], [0.0, 2.25e-3], jnp.float64)
        rows = solvers.lp_split(la, cl, jnp.asarray([1.0, 1.0], jnp.float64))
    assert np.asarray(rows).tolist() == [2, 1]


_rebalance_moves = jax.jit(solvers.rebalance_moves)


@settings(max_examples=80)
@given(layer=small_layers(max_out=40), cluster=clusters())
# identical devices and a layer without halo: the move from the equal split 3, 2, 2 only swaps which
# device holds 3 rows, the latency stays the same, and EdgeLD stops there
@example(layer=Layer("conv", 4, 4, (1, 1), (1, 1), (0, 0, 0, 0), in_height=7, in_width=8),
         cluster=([1e9] * 3, [np.inf] * 3, [0.0] * 3, [1.0] * 3))
def test_rebalance_is_edgeld_from_the_equal_split_to_its_fixed_point(layer, cluster):
    """EdgeLD's rule written out: from the equal split, move one row from the slowest device to the
    fastest other active one while that strictly lowers the layer latency; the result is the first
    split where the move does not help."""
    flops, bandwidth, latency, share = cluster
    with enable_x64():
        la, cl = as_arrays(layer, flops, bandwidth, latency, jnp.float64)
        a = jnp.asarray(share, jnp.float64)
        rates = allocation_rates(cl, a)
        times = lambda r: np.asarray(device_times(la, rates, jnp.asarray(r)))  # noqa: E731
        active = np.asarray(share) > 0
        k, total = active.sum(), layer.out_height
        rank = np.cumsum(active) - 1
        rows = np.where(active, total // k + (rank < total % k), 0)
        moves = 0
        for _ in range(total * len(share)):
            t = times(rows)
            slow = int(np.argmax(t))
            fast = int(np.argmin(np.where(active & (np.arange(len(share)) != slow), t, np.inf)))
            if rows[slow] == 0 or fast == slow or not active[fast]:
                break
            cand = rows.copy()
            cand[slow] -= 1
            cand[fast] += 1
            if not times(cand).max() < t.max():
                break
            rows, moves = cand, moves + 1
        got, got_moves = (np.asarray(v) for v in _rebalance_moves(la, cl, a))
    assert got.tolist() == rows.tolist() and int(got_moves) == moves


@pytest.mark.slow
def test_rebalance_never_needs_more_moves_than_rows():
    """The walk from the equal split stops on its own, well inside its bound of H_out * N moves: on
    random layers (up to 600 rows) and clusters of 2 to 8 devices up to 10^4x apart, with absent
    devices, no instance takes more moves than the layer has rows."""
    rng = np.random.default_rng(21)
    fn = jax.jit(jax.vmap(solvers.rebalance_moves))
    most = 0
    for n in (2, 3, 5, 8):
        la, cl, a, _ = sampling.random_batch(rng, 2048, n, max_height=600)
        flops = cl.flops * (10.0 ** rng.uniform(0, 4, cl.flops.shape)).astype(np.float32)
        cl = Cluster(jnp.asarray(flops), cl.bandwidth, cl.latency)
        rows, moves = (np.asarray(v) for v in fn(la, cl, jnp.asarray(a)))
        height = np.asarray(la.out_height)
        assert (rows.sum(1) == height).all() and (moves >= 0).all()
        assert (moves <= height).all(), (n, int((moves - height).max()))
        most = max(most, int(moves.max()))
    assert most > 200  # the walks are long: rows do move


def test_fix_total_cuts_excess_from_the_end_and_gives_a_deficit_to_the_last_active_device():
    # device-major (N, B): each column is one instance, worked out by hand
    rows = jnp.asarray([[3, 3, 1, 0], [4, 4, 1, 2], [5, 5, 0, 0]], jnp.int32)
    rows = jnp.concatenate([rows, jnp.zeros((3, 1), jnp.int32)], axis=1)
    total = jnp.asarray([10, 2, 5, 2, 3], jnp.int32)
    active = jnp.asarray([[True, True, True, True, True], [True, True, True, True, False],
                          [True, True, False, True, False]])
    got = np.asarray(solvers._fix_total(rows, total, active))
    assert got.T.tolist() == [[3, 4, 3], [2, 0, 0], [1, 4, 0], [0, 2, 0], [3, 0, 0]]


def test_water_fill_level_is_the_best_prefix_in_alpha():
    """The water level is the smallest (H + sum alpha/beta) / sum 1/beta over the prefixes of the
    active devices in increasing alpha, and n_i = max(0, T - alpha_i) / beta_i sums to H."""
    rng = np.random.default_rng(4)
    n, batch = 6, 400
    alpha = rng.choice([0.0, 1e-4, 1e-3, 1e-2], (n, batch)) * rng.uniform(0.5, 2.0, (n, batch))
    beta = 10.0 ** rng.uniform(-6, -2, (n, batch))
    # instances of slow devices only (10 s a row and more: tiny shares): sum 1/beta is below 1
    slow = rng.random(batch) < 0.3
    beta[:, slow] = 10.0 ** rng.uniform(1, 2, (n, slow.sum()))
    active = rng.random((n, batch)) < 0.7
    active[rng.integers(0, n, batch), np.arange(batch)] = True
    total = rng.integers(1, 300, batch).astype(np.float64)
    with enable_x64():
        level, rows = (np.asarray(x) for x in jax.jit(solvers.water_fill)(
            jnp.asarray(alpha), jnp.asarray(beta), jnp.asarray(active), jnp.asarray(total)))
    for b in range(batch):
        on = np.flatnonzero(active[:, b])
        order = on[np.argsort(alpha[on, b], kind="stable")]
        a, w = alpha[order, b], 1.0 / beta[order, b]
        want = np.min((total[b] + np.cumsum(a * w)) / np.cumsum(w))
        assert level[b] == pytest.approx(want, rel=1e-9)
        n_want = np.where(active[:, b], np.maximum(0.0, want - alpha[:, b]) / beta[:, b], 0.0)
        np.testing.assert_allclose(rows[:, b], n_want, rtol=1e-9, atol=1e-9)
        assert rows[:, b].sum() == pytest.approx(total[b], rel=1e-9)


def test_water_fill_keeps_the_smallest_alpha_when_the_level_rounds_onto_it():
    # tau far above the row times: the level (1 + H beta) rounds to alpha = 1 in float64; the device
    # stays in (a finite level, no NaN or inf rows) and the rounding gives it the row
    with enable_x64():
        alpha = jnp.asarray([1.0, 2.0])
        beta, active, total = jnp.asarray([1e-20, 1e-20]), jnp.asarray([True, True]), jnp.asarray(1.0)
        level, n = solvers.water_fill(alpha, beta, active, total)
        rows = solvers.round_split(n, alpha, beta, active, total)
    assert float(level) == 1.0 and np.isfinite(np.asarray(n)).all()
    assert np.asarray(rows).tolist() == [1, 0]


def test_round_split_of_a_device_major_batch_is_each_instances_rounding():
    """Floor, then each remaining row to the active device with the smallest alpha + beta (n + 1)
    (the first on ties), written per instance in numpy; the batch is solved in one device-major
    call, where an instance that has given all its rows waits while the others go on."""
    rng = np.random.default_rng(12)
    n, batch = 5, 300
    alpha = rng.choice([0.0, 1e-3], (n, batch)) * rng.uniform(0.5, 2.0, (n, batch))
    beta = 10.0 ** rng.uniform(-5, -3, (n, batch))
    active = rng.random((n, batch)) < 0.7
    active[0] = True
    total = rng.integers(1, 60, batch)
    share = np.where(active, rng.random((n, batch)), 0.0)
    cont = share / share.sum(0) * total  # continuous rows summing to H over the active devices
    with enable_x64():
        got = np.asarray(jax.jit(solvers.round_split)(jnp.asarray(cont), jnp.asarray(alpha), jnp.asarray(beta),
                                                      jnp.asarray(active), jnp.asarray(total, jnp.float64)))
    for b in range(batch):
        want = np.where(active[:, b], np.floor(cont[:, b]), 0).astype(int)
        while want.sum() < total[b]:
            want[int(np.argmin(np.where(active[:, b], alpha[:, b] + beta[:, b] * (want + 1), np.inf)))] += 1
        assert got[:, b].tolist() == want.tolist(), b
