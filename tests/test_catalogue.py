"""The request-latency engine against the numpy reference: a request's execution time is the sum of
the reference latencies of every layer of its model (repeated layers included), split by the rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsplit import reference, sampling, solvers, zoo
from jaxsplit.catalogue import RequestLatency
from jaxsplit.latency import Cluster, layer_arrays

enable_x64 = lambda: jax.enable_x64(True)  # noqa: E731

# vgg16 and resnet18 repeat layers (multiplicities above 1); the three tables differ in length
MODELS = ("alexnet", "resnet18", "vgg16")
SIZE = (64, 64)
Q = 2.0


def equal_rows(total: int, share: np.ndarray) -> np.ndarray:
    """The equal split by hand: the active devices in order, the first ``total % k`` one row more."""
    active = share > 0
    k = int(active.sum())
    rank = np.cumsum(active) - 1
    return np.where(active, total // k + (rank < total % k), 0)


def reference_time(model: str, devices, share, rows_of) -> float:
    return sum(reference.layer_latency(layer, devices, share, rows_of(layer), Q) for layer in zoo.get(model, SIZE))


def random_requests(rng, batch: int, n: int):
    parts = [sampling.random_cluster(rng, n) for _ in range(batch)]
    f, b, t, a = (np.stack([p[i] for p in parts]) for i in range(4))
    return f, b, t, a, rng.integers(0, len(MODELS), batch)


def test_equal_split_exec_times_are_the_reference_sums():
    rng = np.random.default_rng(6)
    f, b, t, a, model = random_requests(rng, 5, 3)
    want = [reference_time(MODELS[m], list(zip(f[i], b[i], t[i])), a[i], lambda layer, i=i: equal_rows(layer.out_height, a[i]))
            for i, m in enumerate(model)]
    with enable_x64():
        engine = RequestLatency(MODELS, SIZE, Q, 3, split="equal", dtype=jnp.float64)
        cl = Cluster.create(f, b, t, dtype=jnp.float64)
        args = (cl, jnp.asarray(a), jnp.asarray(model, jnp.int32))
        got = np.asarray(engine.exec_times(*args))
        one = [float(engine.exec_time(jax.tree.map(lambda x: x[i], cl), args[1][i], args[2][i])) for i in range(2)]
        engine.chunk = 7  # many chunks, a request's layers split across two of them
        chunked = np.asarray(engine.exec_times(*args))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(chunked, want, rtol=1e-9)
    np.testing.assert_allclose(one, want[:2], rtol=1e-9)


def test_exec_times_count_every_layer_once_whatever_the_chunk():
    """The array path's chunking against the reference sums, for chunks that end exactly on the
    batch's last layer-instance, one before it, one after it, or leave it alone in a chunk, with the
    widest model last (its last layer is where a position past the batch is clamped to)."""
    rng = np.random.default_rng(12)
    with enable_x64():
        engine = RequestLatency(MODELS, SIZE, Q, 3, split="equal", dtype=jnp.float64)
        sizes = np.asarray(engine.catalogue.size)
        model = np.array([0, 1, 2, int(np.argmax(sizes))])
        f, b, t, a, _ = random_requests(rng, len(model), 3)
        want = [reference_time(MODELS[m], list(zip(f[i], b[i], t[i])), a[i],
                               lambda layer, i=i: equal_rows(layer.out_height, a[i])) for i, m in enumerate(model)]
        total = int(sizes[model].sum())
        args = (Cluster.create(f, b, t, dtype=jnp.float64), jnp.asarray(a), jnp.asarray(model, jnp.int32))
        for chunk in (total, total - 1, total + 1, total // 2, (total - 1) // 2, 3):
            engine.chunk = chunk
            np.testing.assert_allclose(np.asarray(engine.exec_times(*args)), want, rtol=1e-9, err_msg=f"chunk {chunk}")


def test_closed_form_exec_times_are_the_reference_sums_of_its_rows():
    rng = np.random.default_rng(8)
    f, b, t, a, model = random_requests(rng, 4, 3)
    with enable_x64():
        split = jax.jit(solvers.closed_form_split)

        def rows_of(i):
            cl = Cluster.create(f[i], b[i], t[i], dtype=jnp.float64)
            return lambda layer: np.asarray(split(jax.tree.map(lambda x: x[0], layer_arrays([layer], Q, jnp.float64)),
                                                  cl, jnp.asarray(a[i])))

        want = [reference_time(MODELS[m], list(zip(f[i], b[i], t[i])), a[i], rows_of(i)) for i, m in enumerate(model)]
        engine = RequestLatency(MODELS, SIZE, Q, 3, dtype=jnp.float64)
        got = np.asarray(engine.exec_times(Cluster.create(f, b, t, dtype=jnp.float64), jnp.asarray(a),
                                           jnp.asarray(model, jnp.int32)))
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.slow
def test_reference_times_and_their_chunks():
    f, b, t, _ = sampling.random_cluster(np.random.default_rng(1), 3)
    ones = np.ones(3)
    want = [reference_time(m, list(zip(f, b, t)), ones, lambda layer: equal_rows(layer.out_height, ones)) for m in MODELS]
    with enable_x64():
        engine = RequestLatency(MODELS, SIZE, Q, 3, split="equal", dtype=jnp.float64)
        cl = Cluster.create(f, b, t, dtype=jnp.float64)
        got = np.asarray(engine.reference_times(cl))
        chunk = 5
        parts = [np.asarray(engine.reference_chunk(cl, jnp.int32(c), chunk)) for c in range(-(-engine.num_flat // chunk))]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(np.sum(parts, axis=0), want, rtol=1e-9)
    # the request's work: FLOP of every layer of the model
    np.testing.assert_allclose(np.asarray(engine.catalogue.work),
                               [sum(layer.row_work * layer.out_height for layer in zoo.get(m, SIZE)) for m in MODELS])
