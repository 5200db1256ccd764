"""The one command-line convention of every ``jaxsplit`` command.

* A list option takes ``a,b,c`` and ``a b c`` alike (``--eval-loads 0.3,0.9`` is ``--eval-loads 0.3
  0.9``, ``--models vgg16 resnet18`` is ``--models vgg16,resnet18``): :func:`spell_lists` rewrites
  either spelling into the one the option's parser reads.
* A parse error is one line, ``jaxsplit CMD: error: --option: what is wrong, got 'value'``, exit
  status 2: :func:`parse` raises ValueError with the option and the value (the dispatcher prints it),
  whether the check is ours or tyro's.

A list option is a field typed ``tuple[T, ...]`` or ``tuple[T, T]`` (tyro reads its values as separate
words), or a ``str`` field whose metadata holds ``{"list": True}`` (its values joined by commas, read
by the command itself, e.g. ``--models`` or ``--loads LO,HI``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import types
import typing
from typing import Any, Sequence, TypeVar

import tyro

T = TypeVar("T")

#: metadata of a ``str`` field holding a comma-separated list
LIST = {"list": True}


@dataclasses.dataclass(frozen=True)
class ListOption:
    """A list option: its flag, the type of one value, how many values (None: any) and whether its
    parser reads one comma-joined word (``joined``) or separate words."""

    flag: str
    item: Any
    count: int | None
    joined: bool


def _strip_annotations(tp: Any) -> Any:
    """``tp`` without Annotated wrappers (tyro's markers) and without ``| None``."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _strip_annotations(args[0])
    return tp


def _markers(tp: Any) -> tuple[Any, ...]:
    out: tuple[Any, ...] = ()
    while typing.get_origin(tp) is typing.Annotated:
        out += tuple(tp.__metadata__)
        tp = typing.get_args(tp)[0]
    return out


def list_options(cls: type) -> dict[str, ListOption]:
    """The list options of a tyro dataclass (nested ``OmitArgPrefixes`` dataclasses included), by flag."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, ListOption] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        bare = _strip_annotations(hint)
        if dataclasses.is_dataclass(bare):
            out.update(list_options(bare))
            continue
        flag = "--" + f.name.replace("_", "-")
        appended = any("UseAppendAction" in repr(m) for m in _markers(hint))
        if typing.get_origin(bare) is tuple and not appended:
            args = typing.get_args(bare)
            if len(args) == 2 and args[1] is Ellipsis:
                out[flag] = ListOption(flag, args[0], None, False)
            elif args and all(a == args[0] for a in args):
                out[flag] = ListOption(flag, args[0], len(args), False)
        elif f.metadata.get("list"):
            out[flag] = ListOption(flag, str, None, True)
    return out


def split_values(words: Sequence[str]) -> list[str]:
    """Every value of ``words``, each word split at its commas (empty pieces dropped):
    ``["0.3,0.6", "0.9"]`` -> ``["0.3", "0.6", "0.9"]``."""
    return [piece.strip() for word in words for piece in word.split(",") if piece.strip()]


def _is_option(word: str) -> bool:
    """A word that starts another option (``--x``, ``-h``), not a value such as ``-1`` or ``-0.5``."""
    return word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-[0-9.]+(e[-+]?[0-9]+)?", word)


def _check_item(option: ListOption, value: str) -> None:
    kinds = {int: ("an integer", int), float: ("a number", float)}
    if option.item in kinds:
        what, cast = kinds[option.item]
        try:
            cast(value)
        except ValueError:
            raise ValueError(f"{option.flag}: expected {what} in the list, got {value!r}") from None


def spell_lists(argv: Sequence[str], options: dict[str, ListOption], positionals: bool = False) -> list[str]:
    """``argv`` with every list option's values in the spelling its parser reads (see the module
    docstring); a value that is not of the option's type raises ValueError naming the option and the
    value. With ``positionals`` a list option takes no word after its values are complete, nor a word
    that is not of its type, so that a positional argument after it stays one."""
    words, out, tail, i = list(argv), [], [], 0
    while i < len(words):
        word = words[i]
        flag, eq, inline = word.partition("=")
        option = options.get(flag) if word.startswith("--") else None
        if option is None:
            out.append(word)
            i += 1
            continue
        given, i = ([inline] if eq else []), i + 1
        while i < len(words) and not _is_option(words[i]) and words[i] != "--":
            if positionals and given and (option.count is not None and len(split_values(given)) >= option.count
                                          or option.item in (int, float) and not _numbers(words[i])):
                break  # the rest is a positional argument
            given.append(words[i])
            i += 1
        values = split_values(given)
        for value in values:
            _check_item(option, value)
        if option.count is not None and values and len(values) != option.count:
            raise ValueError(f"{option.flag}: expected {option.count} values, got {','.join(values)!r}")
        if not values:  # no value (or an empty one): as given, and the parser or the command says what it expected
            out += [flag, *given]
        elif option.joined:
            out += [flag, ",".join(values)]
        elif positionals and option.count is not None:
            tail += [flag, *values]  # last, so that a parser that reads greedily leaves the positionals alone
        else:
            out += [flag, *values]
    return out + tail


def _numbers(word: str) -> bool:
    try:
        [float(v) for v in split_values([word])]
    except ValueError:
        return False
    return True


def _one_line(text: str, argv: Sequence[str]) -> str:
    """tyro's error box (printed without a terminal) as one line naming the option and the value."""
    lines = [ln.strip(" │╭╮╰╯") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    rule = lambda ln: set(ln) <= set("-─━ ")
    body: list[str] = []
    for ln in lines[1:]:  # after the title: the message, up to the next rule
        if rule(ln):
            if body:
                break
            continue
        body.append(ln)
    message = " ".join(body) or (lines[0] if lines else "cannot read the options")
    m = re.match(r"Error parsing (--\S+): (.*)", message)
    if m:
        flag, rest = m.groups()
        rest = re.sub(r"could not convert string to float: (.*)", r"expected a number, got \1", rest)
        rest = re.sub(r"invalid literal for int\(\) with base 10: (.*)", r"expected an integer, got \1", rest)
        return f"{flag}: {rest}"
    m = re.match(r"invalid choice (.*) for argument '(--\S+)'\. Expected one of \((.*)\)\.?", message)
    if m:
        value, flag, choices = m.groups()
        return f"{flag}: invalid choice {value}; expected one of {choices.replace(chr(39), '')}"
    m = re.match(r"Missing value for argument '(--\S+)'.*", message)
    if m:
        return f"{m.group(1)}: missing value"
    m = re.match(r"Unrecognized options?: (.*)", message)
    if m:
        words = [w.strip() for w in m.group(1).split(",")]
        first = words[0]
        if not first.startswith("-") and first in argv:  # a stray value: name the option before it
            at = list(argv).index(first)
            before = next((w for w in reversed(argv[:at]) if w.startswith("--")), "")
            if before:
                return f"{before.partition('=')[0]}: unexpected value {first!r} (it takes no value, or fewer)"
            return f"unexpected argument {first!r}"
        return f"unknown option {first!r}" + (f" (with {' '.join(words[1:])!r})" if words[1:] else "")
    m = re.match(r"Missing from [^:]+: (.*)", message)
    if m:
        what = m.group(1).strip()
        flag = what.split()[0] if what.startswith("--") else None
        return f"{flag}: required" if flag else f"a required argument is missing: {what}"
    return message


def parse(cls: type[T], argv: Sequence[str], prog: str, default: T | None = None) -> T:
    """``tyro.cli(cls)`` on ``argv`` under the one convention: list options in either spelling, every
    parse error a ValueError of one line (``--option: ..., got 'value'``). ``--help`` prints tyro's full
    help and exits 0 as before. ``default``: the instance whose values are the defaults (default:
    ``cls()`` where every field has one), so that a default read from a declaration is read now."""
    hints = typing.get_type_hints(cls, include_extras=True)
    positionals = any("Positional" in repr(m) for f in dataclasses.fields(cls) for m in _markers(hints[f.name]))
    words = spell_lists(argv, list_options(cls), positionals)
    if default is None and all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                               for f in dataclasses.fields(cls)):
        default = cls()
    buffer = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "10000"  # one line per message inside tyro's box
    try:
        with contextlib.redirect_stderr(buffer):
            return tyro.cli(cls, args=words, prog=prog, default=default)
    except SystemExit as done:
        if done.code in (0, None):
            sys.stderr.write(buffer.getvalue())
            raise
        raise ValueError(_one_line(buffer.getvalue(), words)) from None
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
