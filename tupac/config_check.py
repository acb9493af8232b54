"""Checking a configuration mapping (parsed YAML) against a config dataclass, before any work starts.

The stage config classes are the single source of truth: their fields give the option names, their
type annotations the types, their ``__post_init__`` the ranges. :func:`build_checked` checks the
names and types of a mapping against a class, then constructs it so that the class's own range
checks run, and reports the first problem as one :class:`~tupac.errors.ConfigError` line naming the
dotted key, the value received and what was expected::

    tumor.train.epochs = 'ten': expected an integer, got a string
    fit.repeats = 0: repeats must be >= 1, got 0

YAML gives ``int``, ``float``, ``bool``, ``str``, ``None``, lists and mappings; an annotation
accepts:

- ``int``: integers, not booleans (``true`` is not 1 epoch); ``float``: integers or floats, not
  booleans; ``bool``: booleans only (not ``1`` nor ``"yes"``); ``str``: strings; ``Path``: strings;
- ``X | None``: null or an ``X``; ``tuple[X, ...]`` and ``list[X]``: a list of ``X`` (made a tuple
  for a tuple field); ``dict[K, V]``: a mapping; ``Literal[...]``: one of its values; ``Any``: anything;
- a dataclass (``augment:`` of :class:`tupac.train.config.TrainConfig`): a mapping, checked
  against that class and built into it.

A ``dict`` field whose mapping holds the options of another config class (``train:`` of the tumor
and mitosis training configs holds :class:`~tupac.train.config.TrainConfig` fields) says so with
``field(metadata={SCHEMA: TrainConfig})``: its mapping is checked against that class and stays a
mapping, as the stage expects.

Each field also carries its description, written once with the field (:func:`option`): the command
line's ``--help`` (``tupac/cli/options.py``) and ``tupac run --print-config`` read it from there.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from tupac.errors import ConfigError

#: Key of a field's ``metadata`` naming the config class that a ``dict`` field's mapping follows.
SCHEMA = "schema"
#: Key of a field's ``metadata`` holding its description (config file comments, command-line help).
HELP = "help"

_SHOW_CHARS = 60


class _Mismatch(Exception):
    """A value does not fit an annotation; the caller words the message for the whole field.

    ``args[0]``, when given, is the offending part of the value (an item of a list).
    """


def build_checked(
    cls: type,
    values: Any,
    where: str,
    *,
    given: Mapping[str, Any] | None = None,
    reserved: Collection[str] = (),
) -> Any:
    """Check ``values`` against the fields of dataclass ``cls``, then construct ``cls``.

    Parameters
    ----------
    cls : type
        A dataclass; its type annotations (resolved with ``typing.get_type_hints``) give the types.
    values : object
        The options the user gave (one YAML section); must be a mapping.
    where : str
        Dotted name of the section (``"tumor"``, ``"tumor.train"``); prefixes every key in messages.
    given : mapping, optional
        Values the caller supplies (the top-level seed, run-time folders); the user's own values
        win over them. They are not checked: they come from code, not from the user.
    reserved : collection of str
        Fields the user may not set: the caller fills them in (JobConfig's folders come from the command).

    Returns
    -------
    object
        ``cls(**given, **values)`` with lists made tuples where a field is a tuple.

    Raises
    ------
    ConfigError
        One line: the dotted key, the value and what was expected. A ``ValueError`` of the class's
        own ``__post_init__`` (``ConfigError``, ``FeatureError``...) is reworded the same way.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} = {show(values)}: expected a mapping of options, got {kind(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    allowed = [name for name in fields if name not in reserved]
    checked: dict[str, Any] = {}
    for key, value in values.items():
        dotted = join(where, key)
        if key in reserved:
            raise ConfigError(f"{dotted} = {show(value)}: not a config option; the command gives it")
        if key not in allowed:
            raise ConfigError(f"{dotted} = {show(value)}: unknown option; expected one of {', '.join(allowed)}")
        checked[key] = check_value(value, hints[key], dotted)
        schema = fields[key].metadata.get(SCHEMA)
        if schema is not None:
            build_checked(schema, value, dotted)
    return _construct(cls, dict(given or {}), checked, values, where)


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           **metadata: Any) -> Any:
    """A config field with its description: ``field(default=..., metadata={HELP: help})``.

    The one place a field's default and help are written; ``metadata`` adds other keys
    (:data:`SCHEMA`).
    """
    return dataclasses.field(default=default, default_factory=default_factory, metadata={HELP: help, **metadata})


def help_of(cls: type, name: str) -> str:
    """The description of field ``name`` of config class ``cls`` ("" when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get(HELP, "")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def check_value(value: Any, hint: Any, dotted: str) -> Any:
    """``value`` made to fit the annotation ``hint`` (lists become tuples for tuple fields).

    Raises
    ------
    ConfigError
        The value does not fit; the message names ``dotted``, the value and the expected type.
    TypeError
        ``hint`` is an annotation this module does not know: a mistake in a config class, not in
        the user's file, so it is not dressed as a config error.
    """
    try:
        return _conform(value, hint, dotted)
    except _Mismatch as e:
        part = e.args[0] if e.args else value
        got = kind(value) if part is value else f"{kind(value)} holding {show(part)} ({kind(part)})"
        raise ConfigError(f"{dotted} = {show(value)}: expected {describe(hint)}, got {got}{_yaml_hint(part, hint)}") from None


def describe(hint: Any) -> str:
    """Words for what an annotation accepts (``int | None`` -> ``"an integer or null"``).

    Raises
    ------
    TypeError
        For an annotation that :func:`check_value` cannot check either.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        words = [describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} options"
    if hint in _SCALARS:
        return _SCALARS[hint][0]
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
        item = args[0] if args else Any
        return f"a list of {_SCALARS[item][1] if item in _SCALARS else 'values'}"
    if origin in (dict, Mapping) or hint is dict:
        return "a mapping with string keys" if args and args[0] is str else "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    raise TypeError(f"tupac.config_check cannot check the annotation {hint!r}")


def show(value: Any) -> str:
    """``repr`` of a value, cut short so that a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def kind(value: Any) -> str:
    """The YAML name of a value's type (``"a string"``, ``"null"``...)."""
    for types_, words in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                          (type(None), "null"), (list, "a list"), (tuple, "a list"), (Mapping, "a mapping")):
        if isinstance(value, types_):
            return words
    return type(value).__name__


def join(where: str, key: Any) -> str:
    """Dotted key of ``key`` inside section ``where`` (just ``key`` at the top level)."""
    return f"{where}.{key}" if where else str(key)


# --- inside ----------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # bool is an int subclass: `epochs: true` is not 1


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# annotation -> (words for one, words for a list of them, test)
_SCALARS: dict[Any, tuple[str, str, Callable[[Any], bool]]] = {
    int: ("an integer", "integers", _is_int),
    float: ("a number", "numbers", _is_number),
    bool: ("a boolean (true or false)", "booleans", lambda v: isinstance(v, bool)),
    str: ("a string", "strings", lambda v: isinstance(v, str)),
    Path: ("a path", "paths", lambda v: isinstance(v, (str, PathLike))),
}


def _conform(value: Any, hint: Any, dotted: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _conform_union(value, args, dotted)
    if dataclasses.is_dataclass(hint):
        # A nested section (augment:): its own keys get their own dotted names.
        return value if isinstance(value, hint) else build_checked(hint, value, dotted)
    if hint in _SCALARS:
        if not _SCALARS[hint][2](value):
            raise _Mismatch(value)
        return value
    if origin in (tuple, list):
        return _conform_sequence(value, origin, args, dotted)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(value)
        key_hint = args[0] if args else Any
        for k in value:
            _conform(k, key_hint, dotted)
        return value
    if origin is typing.Literal:
        if value not in args:
            raise _Mismatch(value)
        return value
    describe(hint)  # raises the TypeError that names the unknown annotation
    raise AssertionError(f"describe() knows {hint!r} but _conform does not")


def _conform_union(value: Any, args: tuple, dotted: str) -> Any:
    if value is None and type(None) in args:
        return None
    choices = [a for a in args if a is not type(None)]
    if len(choices) == 1:  # `X | None`: X's own mismatch says which item of a list is wrong
        return _conform(value, choices[0], dotted)
    for arg in choices:
        try:
            return _conform(value, arg, dotted)
        except (_Mismatch, ConfigError):
            continue
    raise _Mismatch(value)


def _conform_sequence(value: Any, origin: type, args: tuple, dotted: str) -> Any:
    # A string is a sequence, but `grade_models: logreg` is a mistake, not a list of letters.
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _Mismatch(value)
        return tuple(_conform(v, a, dotted) for v, a in zip(value, args))
    item = args[0] if args else Any
    items = [_conform(v, item, dotted) for v in value]
    return tuple(items) if origin is tuple else items


def _construct(cls: type, given: dict[str, Any], checked: dict[str, Any], original: Mapping[str, Any],
               where: str) -> Any:
    try:
        return cls(**{**given, **checked})
    except ValueError as e:  # ConfigError, FeatureError, ... of the class's own range checks
        key = _culprit(cls, given, checked)
        if key is None:  # only a combination of options is wrong; the class's message names them
            raise ConfigError(f"{where}: {_one_line(e)}") from None
        # The value as the user wrote it (a list, not the tuple it became).
        raise ConfigError(f"{join(where, key)} = {show(original[key])}: {_one_line(e)}") from None


def _culprit(cls: type, given: dict[str, Any], checked: dict[str, Any]) -> str | None:
    """The first user option that fails the class's checks on its own (others at their defaults).

    The classes' messages are free text (some name a field, some two at once); trying each option
    alone finds the dotted key to report without parsing them.
    """
    for key, value in checked.items():
        try:
            cls(**{**given, key: value})
        except ValueError:
            return key
    return None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _yaml_hint(value: Any, hint: Any) -> str:
    """A hint for YAML 1.1's trap: ``1e-3`` without a dot is read as the string ``"1e-3"``."""
    if not isinstance(value, str) or "e" not in value.lower() or "number" not in describe(hint):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML reads a number in e-notation without a dot as a string: write 1.0e-3, not 1e-3)"
