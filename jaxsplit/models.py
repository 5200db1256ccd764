"""Model specs: which layer table a catalogue entry names (MODEL.md section 1).

A catalogue (``--models``, :class:`jaxsplit.catalogue.RequestLatency`) is a tuple of *specs*, each
one of:

* ``NAME``: a zoo model (:mod:`jaxsplit.zoo`) at the catalogue's input size;
* ``NAME@H`` or ``NAME@HxW``: a zoo model at H x H or H x W;
* ``PATH.py:FACTORY``, ``PATH.py:FACTORY@H`` or ``PATH.py:FACTORY@HxW``: the module returned by ``FACTORY()`` in the file
  (a ``torch.nn.Module``, or ``(module, shape)``), read by the PyTorch bridge;
* ``torchvision:NAME``, ``torchvision:NAME@H`` or ``torchvision:NAME@HxW``: a torchvision architecture (random weights),
  read by the bridge.

Without ``@`` a model runs at the catalogue's input size; sizes are rows x columns of the input
image. A bridge spec needs the optional ``torch`` extra; this module imports torch only when such a
spec is resolved, so ``import jaxsplit.catalogue`` stays free of it.

>>> from jaxsplit import models
>>> models.parse("vgg16@160x192")
ModelSpec(text='vgg16@160x192', kind='zoo', name='vgg16', size=(160, 192))
>>> len(models.resolve("vgg16@160x192", (224, 224)))   # layers that cost time
21
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from functools import lru_cache

from . import zoo
from .contract import MAX_SIZE
from .layers import Layer

__all__ = ["ModelSpec", "parse", "check", "resolve", "GRAMMAR", "TORCH_HINT"]

#: One-line summary of the grammar, for option help and error messages.
GRAMMAR = "NAME[@H or @HxW] (zoo), PATH.py:FACTORY[@HxW] or torchvision:NAME[@HxW] (PyTorch bridge)"
#: What to do when a bridge spec meets an installation without torch.
TORCH_HINT = "install the torch extra: pip install 'jaxsplit[torch]'"

_SIZE = re.compile(r"(\d+)(?:x(\d+))?")
#: the "field '...': " that a zoo or bridge message starts with (the spec names the field instead)
_FIELD_PREFIX = re.compile(r"^field '[^']*'(?: = '[^']*')?:? ")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
      text: the spec as written (the catalogue's entry).
      kind: ``"zoo"``, ``"file"`` (``PATH.py:FACTORY``) or ``"torchvision"``.
      name: the zoo or torchvision name, or ``"PATH.py:FACTORY"`` for a file.
      size: (H, W) of the input after ``@``, or None (the catalogue's input size).
    """

    text: str
    kind: str
    name: str
    size: tuple[int, int] | None = None

    @property
    def bridge(self) -> bool:
        """Whether the layer table is read from a torch module (needs torch)."""
        return self.kind != "zoo"


def _error(spec: str, why: str) -> ValueError:
    return ValueError(f"field 'models': {spec!r}: {why}")


def _size(spec: str, text: str) -> tuple[int, int]:
    """(H, W) from ``H`` (a square) or ``HxW``; ValueError names the spec."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise _error(spec, f"the size after '@' must be H or HxW (positive integers), got {text!r}")
    h = int(m.group(1))
    w = h if m.group(2) is None else int(m.group(2))
    for v in (h, w):
        if not 1 <= v <= MAX_SIZE:
            raise _error(spec, f"the size after '@' must be positive integers at most {MAX_SIZE}, got {text!r}")
    return h, w


def parse(spec: str) -> ModelSpec:
    """Parse one spec (grammar: the module docstring); ValueError (one line, field 'models') if malformed.

    Checks the form only: a zoo name must be known, but a file or factory is looked at by
    :func:`resolve`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"field 'models': a model spec must be a non-empty string, got {spec!r}")
    if spec != spec.strip():
        raise _error(spec, "leading or trailing spaces")
    if spec.startswith("torchvision:"):
        kind, body = "torchvision", spec[len("torchvision:"):]
    elif ".py:" in spec:
        kind, body = "file", spec
    else:
        kind, body = "zoo", spec
    # '@' after the last ':' starts the size (a file's folder may hold an '@')
    head, at, tail = body.rpartition("@")
    if not at or ":" in tail:
        head, tail = body, None
    size = None if tail is None else _size(spec, tail)
    if kind == "zoo":
        if head not in zoo.ZOO_DEFAULT_SIZE:
            raise _error(spec, f"unknown model {head!r}; known: {', '.join(zoo.ZOO_DEFAULT_SIZE)}; or {GRAMMAR}")
    elif kind == "torchvision":
        if not head.isidentifier():
            raise _error(spec, f"torchvision:NAME needs a model name, got {head!r}")
    else:
        path, _, factory = head.rpartition(":")
        if not path.endswith(".py") or not factory.isidentifier():
            raise _error(spec, f"expected PATH.py:FACTORY[@HxW] with FACTORY a function name, got {head!r}")
    return ModelSpec(spec, kind, head, size)


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def check(spec: str) -> ModelSpec:
    """:func:`parse`, and for a bridge spec that torch is installed and the file exists (cheap: nothing
    is imported or traced). ValueError: one line naming the field 'models' and the spec."""
    parsed = parse(spec)
    if parsed.bridge and not _torch_available():
        raise _error(spec, f"a PyTorch model needs torch, which is not installed; {TORCH_HINT}")
    if parsed.kind == "file":
        path = parsed.name.rpartition(":")[0]
        if not os.path.isfile(path):
            raise _error(spec, f"file {path!r} does not exist")
    return parsed


def resolve(spec: str, input_size: tuple[int, int]) -> list[Layer]:
    """The layer table of ``spec``, at its own size or else at ``input_size`` (H, W).

    A zoo spec gives exactly ``zoo.get(NAME, size)``; a bridge spec gives
    ``from_torch(*load_model(...))`` (:mod:`jaxsplit.bridge`). Tables are cached by (spec, size) and,
    for a file, its absolute path, modification time and length, so a catalogue re-built with the same
    models does not trace them again.

    Raises ValueError (one line naming the spec): malformed spec, unknown name, missing file or
    factory, a factory that raises or returns no module, an unsupported layer
    (:class:`~jaxsplit.bridge.UnsupportedModelError`), torch not installed, an input too small.
    A plain zoo ``NAME`` too small for ``input_size`` keeps the zoo's error on field 'input_size'.
    """
    parsed = check(spec)
    size = parsed.size if parsed.size is not None else (int(input_size[0]), int(input_size[1]))
    stamp: tuple[str, int, int] | None = None
    if parsed.kind == "file":  # a relative path read from another folder, or an edited file, is another table
        path = os.path.abspath(parsed.name.rpartition(":")[0])
        st = os.stat(path)
        stamp = (path, st.st_mtime_ns, st.st_size)
    return list(_resolve_cached(parsed, size, stamp))


@lru_cache(maxsize=256)
def _resolve_cached(parsed: ModelSpec, size: tuple[int, int],
                    stamp: tuple[str, int, int] | None) -> tuple[Layer, ...]:
    """The table of a checked spec at ``size``; ``stamp`` (a file's absolute path, modification time in
    ns, length in bytes) only keys the cache."""
    del stamp
    if parsed.kind == "zoo":
        if parsed.size is None:
            return tuple(zoo.get(parsed.name, size))  # the zoo's own errors, as before specs existed
        try:
            return tuple(zoo.get(parsed.name, size))
        except ValueError as err:
            raise _error(parsed.text, _FIELD_PREFIX.sub("", str(err))) from None
    return tuple(_from_bridge(parsed, size))


def _from_bridge(parsed: ModelSpec, size: tuple[int, int]) -> list[Layer]:
    """Load and trace a bridge spec at ``size`` (imports torch)."""
    try:
        from .bridge.graph import from_torch
        from .bridge.planning import load_model
    except ModuleNotFoundError as err:  # torch, or a package it needs, is missing
        raise _error(parsed.text, f"a PyTorch model needs {err.name}, which is not installed; {TORCH_HINT}") from None
    what = parsed.name if parsed.kind == "file" else f"torchvision:{parsed.name}"
    try:
        model, shape = load_model(what, size)
        return from_torch(model, shape)
    except ValueError as err:  # load_model's errors and UnsupportedModelError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _error(parsed.text, _FIELD_PREFIX.sub("", first)) from None
    except SystemExit as err:  # a factory that calls sys.exit() must not end the command silently
        raise _error(parsed.text, f"reading the model failed: the factory exited (SystemExit({err.code!r}))") from None
    except Exception as err:  # a module whose forward fails outside the trace, for instance
        first = str(err).splitlines()[0] if str(err) else ""
        raise _error(parsed.text, f"reading the model failed: {type(err).__name__}: {first}") from None
