"""The closed form as a compiled CPU kernel, called from jitted JAX code through XLA's FFI.

:mod:`jaxsplit.solvers` writes the closed form as array code: every pass is vectorised over a
whole batch, with masks where instances differ (how many devices the water fill drops, how many rows
are left to round, how many correction moves are kept), so each pass runs as often as the slowest
instance of the batch needs. ``closed_form.cc`` (next to this file) runs the same rule on blocks of
one SIMD register of instances (8 in float32, 4 in float64), stops each block when its own instances
are done, and spreads the blocks over XLA's CPU thread pool. It uses the same float operations in the
same order (no fused multiply-add), so its rows are the array code's bit for bit
(tests/test_kernels.py). Two entry points, both traceable, jittable and ``vmap``-able (outer axes
are folded into the batch), CPU only:

* :func:`kernel_rows`: layer fields (B,), cluster fields and shares (B, N) -> rows (B, N) int32.
* :func:`kernel_exec_times`: the execution time E (s) of a batch of whole requests (every unique
  layer of each request's model, times its multiplicity): the environment's step.

:func:`on_cpu` picks the kernel when lowering for the CPU and the array code otherwise
(``jax.lax.platform_dependent``); :func:`jaxsplit.solvers.solve_device_major` and the request
latency engine (:class:`jaxsplit.catalogue.RequestLatency`, which the environment holds) use it.

Both entry points take layers as matrices whose columns are :data:`jaxsplit.latency.LAYER_FIELDS`
(the exec-times table: :data:`jaxsplit.latency.TABLE_FIELDS`, the multiplicity last). The library
reports the columns it assumes (``jaxsplit_table_fields``); one that disagrees is treated as
unavailable, like one that does not compile.

The kernel is compiled on first use with the system's C++ compiler against the FFI headers that
jaxlib ships (``jax.ffi.include_dir()``), cached under ``$JAXSPLIT_CACHE`` (default
``~/.cache/jaxsplit``) by a hash of the source, the flags, the jaxlib version and the CPU, and
written atomically (a half-written library is never loaded). Environment variable
``JAXSPLIT_KERNELS``: ``auto`` (default; fall back to the array code with one warning when no
compiler works), ``off`` (always the array code), ``require`` (raise if the kernel cannot be built).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import jaxlib

from jaxsplit.latency import LAYER_FIELDS, TABLE_FIELDS, Cluster, LayerArrays

SOURCE = pathlib.Path(__file__).with_name("closed_form.cc")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-std=c++17", "-shared", "-fPIC")
MODES = ("auto", "off", "require")
_TARGETS = {
    "rows": ("jaxsplit_closed_form_rows", "JaxsplitClosedFormRows"),
    "exec": ("jaxsplit_exec_times", "JaxsplitExecTimes"),
}
_lock = threading.Lock()
_state: dict[str, object] = {}


class KernelBuildError(RuntimeError, ValueError):
    """The C++ kernel could not be compiled or loaded, or assumes another table layout (the message
    has the compiler's output or both column orders)."""


def mode() -> str:
    """The ``JAXSPLIT_KERNELS`` setting (``auto``, ``off`` or ``require``)."""
    value = os.environ.get("JAXSPLIT_KERNELS", "auto").strip().lower()
    if value not in MODES:
        raise ValueError(f"JAXSPLIT_KERNELS must be one of {', '.join(MODES)}; got {value!r}")
    return value


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JAXSPLIT_CACHE", pathlib.Path.home() / ".cache" / "jaxsplit"))


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (``-march=native`` code runs only where they match,
    and a home directory may be shared by machines with different CPUs)."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")) and line not in lines:
                    lines.append(line)
    except OSError:
        pass
    return platform.machine() + platform.processor() + "".join(lines)


def library_path() -> pathlib.Path:
    """Where the compiled kernel for this source, these flags, this jaxlib and this CPU lives."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(FLAGS).encode())
    key.update(jaxlib.__version__.encode())
    key.update(sys.platform.encode())
    key.update(_cpu_signature().encode())
    return cache_dir() / "kernels" / key.hexdigest()[:16] / "libjaxsplit_closed_form.so"


def build(force: bool = False) -> pathlib.Path:
    """Compile the kernel (if not cached) and return the library's path; raises KernelBuildError."""
    target = library_path()
    if target.exists() and not force:
        return target
    cxx = _compiler()
    if cxx is None:
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++ or clang++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelBuildError(f"compiling the closed-form kernel failed:\n$ {' '.join(cmd)}\n{done.stderr[-4000:]}")
        os.replace(tmp, target)  # atomic: a reader sees the old file or the whole new one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _check_table_fields(lib: ctypes.CDLL) -> None:
    """Raise KernelBuildError unless the library's exec-times table columns are :data:`TABLE_FIELDS`.

    The kernel reads its inputs by column position, so a library built for another order would
    compute wrong latencies without any error."""
    reported = lib.jaxsplit_table_fields  # AttributeError (unavailable) for a library without it
    reported.argtypes = []
    reported.restype = ctypes.c_char_p
    got = (reported() or b"").decode()
    want = ",".join(TABLE_FIELDS)
    if got != want:
        raise KernelBuildError(f"the compiled kernel's table columns are {got!r}, jaxsplit's are {want!r}")


def _load() -> bool:
    """Build, load, check and register the kernel once per process; False if unavailable (mode auto)."""
    with _lock:
        if "ok" in _state:
            return bool(_state["ok"])
        setting = mode()
        ok = False
        if setting != "off":
            try:
                lib = ctypes.cdll.LoadLibrary(str(build()))
                _check_table_fields(lib)
                for base, symbol in _TARGETS.values():
                    for suffix in ("f32", "f64"):
                        fn = getattr(lib, f"{symbol}{suffix.upper()}")
                        jax.ffi.register_ffi_target(f"{base}_{suffix}", jax.ffi.pycapsule(fn), platform="cpu")
                ok = True
            except (KernelBuildError, OSError, AttributeError) as err:
                if setting == "require":
                    raise KernelBuildError(str(err)) from err
                warnings.warn(f"jaxsplit: the compiled closed-form kernel is unavailable, using the JAX "
                              f"closed form on the CPU ({str(err).splitlines()[0]})", RuntimeWarning, stacklevel=3)
        _state["ok"] = ok
        return ok


def available() -> bool:
    """Whether the kernel is built and registered (builds it on the first call unless ``off``)."""
    return _load()


def _require() -> None:
    if not _load():
        raise KernelBuildError("the closed-form kernel is unavailable (JAXSPLIT_KERNELS=off, no compiler, "
                               "or a library with other table columns)")


def _suffix(dtype) -> str:
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return "f32"
    if dtype == jnp.float64:
        return "f64"
    raise TypeError(f"the closed-form kernel takes float32 or float64, got {dtype}")


def layer_matrix(layer: LayerArrays) -> jax.Array:
    """Layer fields (...,) stacked in :data:`LAYER_FIELDS` order: (..., 8)."""
    return jnp.stack([getattr(layer, name) for name in LAYER_FIELDS], axis=-1)


def kernel_rows(layer: LayerArrays, cluster: Cluster, share: jax.Array) -> jax.Array:
    """The closed form's rows by the kernel (CPU only): layer fields (B,), cluster fields and shares
    (B, N) -> int32 rows (B, N), those of :func:`jaxsplit.solvers.solve_device_major_arrays`. Inputs
    are brought to one float dtype as the array code would (float32 or float64)."""
    _require()
    layers = layer_matrix(layer)
    dtype = jnp.result_type(layers, cluster.flops, cluster.bandwidth, cluster.latency, share)  # as the array code
    call = jax.ffi.ffi_call(f"jaxsplit_closed_form_rows_{_suffix(dtype)}",
                            jax.ShapeDtypeStruct(share.shape, jnp.int32), vmap_method="broadcast_all")
    return call(*(jnp.asarray(x, dtype) for x in (layers, cluster.flops, cluster.bandwidth, cluster.latency, share)))


def kernel_exec_times(table: jax.Array, size: jax.Array, cluster: Cluster, share: jax.Array,
                      model: jax.Array) -> jax.Array:
    """Execution time E (s) of every request by the kernel (CPU only).

    Args:
      table: (K * U, 9): each model's U unique layers (padded), columns :data:`TABLE_FIELDS` (the
        fields of :class:`LayerArrays` in order and then the layer's multiplicity).
      size: (K,) int32, the number of real layers of each model (its first ``size[k]`` rows).
      cluster, share: fields and shares (B, N).
      model: (B,) int32 model of each request.
    Returns:
      (B,) the sum over the request's layers of multiplicity x latency under the closed-form split,
      as :meth:`jaxsplit.catalogue.RequestLatency.exec_times`.
    """
    _require()
    dtype = jnp.result_type(table, cluster.flops, cluster.bandwidth, cluster.latency, share)
    call = jax.ffi.ffi_call(f"jaxsplit_exec_times_{_suffix(dtype)}",
                            jax.ShapeDtypeStruct(model.shape, dtype), vmap_method="broadcast_all")
    cast = (jnp.asarray(x, dtype) for x in (cluster.flops, cluster.bandwidth, cluster.latency, share))
    return call(jnp.asarray(table, dtype), jnp.asarray(size, jnp.int32), *cast, jnp.asarray(model, jnp.int32))


#: Most devices the kernel takes (its per-instance arrays are fixed-size).
MAX_DEVICES = 64


def supports(num_devices: int) -> bool:
    """Whether the kernel handles ``num_devices`` (1 to :data:`MAX_DEVICES`) and is available.

    False without building anything when JAX's default backend is not the CPU (a GPU or TPU runs
    the array code)."""
    return 1 <= num_devices <= MAX_DEVICES and jax.default_backend() == "cpu" and available()


def on_cpu(kernel_fn, fallback_fn, *args):
    """``kernel_fn(*args)`` when lowering for the CPU and the kernel is available, else ``fallback_fn``."""
    if jax.default_backend() != "cpu" or not available():
        return fallback_fn(*args)
    return jax.lax.platform_dependent(*args, cpu=kernel_fn, default=fallback_fn)

