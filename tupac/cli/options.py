"""Command-line options derived from a stage's config class, so that a default or a help is written once.

A command names the fields of its config class that it exposes and how (:class:`Flag`: the option
names, click-level bounds); the default, the help and the type come from the field itself
(:func:`tupac.config_check.option`). Every field is either exposed or listed with the reason it is
not (a config-file-only option), so that a field added to a class without a decision fails the
tests rather than silently missing from the command line::

    INFER = ConfigOptions("tupac.infer.job:JobConfig", {"models": Flag("--models"), ...},
                          not_exposed={"tissue_mpp": CONFIG_FILE_ONLY, ...})

    def infer_cmd(data: Path = typer.Option(...), **job) -> None:   # job: the exposed fields' values
        cfg = JobConfig(**job)

    config_command(app, "infer", INFER)(infer_cmd)

A field of a nested mapping with its own config class (``train:`` of the training configs,
``field(metadata={SCHEMA: TrainConfig})``) is exposed by its dotted name (``"train.epochs"``);
:func:`nest` turns the dotted names of the values back into mappings.

The config class is imported the first time the command is parsed or asked for help, not when
``tupac --help`` lists the commands: the stage classes sit beside torch, pandas and scikit-learn,
and the command line would otherwise pay for all of them on every call.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import click
import typer
from typer.core import TyperCommand

from tupac.config_check import HELP, SCHEMA

# Why a field has no option, for the common cases.
CONFIG_FILE_ONLY = "set in a `tupac run` config file"

# The derived options' values, from ConfigCommand.invoke to the command's function (Typer's callback
# wrapper passes on only the parameters of the function's own signature).
_CONFIG_VALUES: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("tupac_config_values", default={})


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line.

    Attributes
    ----------
    decls : tuple of str
        Option names as Typer takes them (``"--actors"``, ``"--two-stage/--one-stage"``).
    min, max : float or None
        Bounds checked by the command line (click's range message, before the config class's own checks).
    optional : bool
        The option defaults to None (not given), so that a value from a config file stands; the help
        names the class's default.
    note : str
        Words appended to the field's help where the option does more than set the field
        (``--patches-per-slide`` sets the negatives too).
    """

    decls: tuple[str, ...]
    min: float | None = None
    max: float | None = None
    optional: bool = False
    note: str = ""

    def __init__(self, *decls: str, min: float | None = None, max: float | None = None, optional: bool = False,
                 note: str = "") -> None:
        for name, value in (("decls", decls), ("min", min), ("max", max), ("optional", optional), ("note", note)):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class ConfigOptions:
    """The options one command derives from a config class (see the module docstring).

    Attributes
    ----------
    config : str
        ``"module:Class"`` of the config dataclass.
    flags : mapping of str to Flag
        Exposed fields (dotted for a field of a nested config mapping), in the order of ``--help``.
    not_exposed : mapping of str to str
        The other fields, each with the reason it has no option.
    """

    config: str
    flags: Mapping[str, Flag]
    not_exposed: Mapping[str, str] = field(default_factory=dict)

    def load(self) -> type:
        module, name = self.config.split(":")
        # Deferred: the stage modules import torch, pandas or scikit-learn, which `tupac --help` should not pay for.
        return getattr(importlib.import_module(module), name)

    def parameters(self) -> list[inspect.Parameter]:
        """One keyword parameter per exposed field, its default a ``typer.Option`` built from the field.

        Raises
        ------
        TypeError
            A field of the class is neither exposed nor listed as not exposed, or a name is not a field.
        """
        cls = self.load()
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        listed = {name.split(".")[0] for name in self.flags if "." in name}
        missing = sorted(names - set(self.flags) - set(self.not_exposed) - listed)
        unknown = sorted(n for n in [*self.flags, *self.not_exposed] if n.split(".")[0] not in names)
        if missing or unknown:
            raise TypeError(f"{self.config}: fields without an option nor a reason in not_exposed: {missing}; "
                            f"not fields: {unknown}")
        return [_parameter(cls, name, flag) for name, flag in self.flags.items()]


def _parameter(cls: type, name: str, flag: Flag) -> inspect.Parameter:
    owner, key, default = _resolve(cls, name)
    f = next(f for f in dataclasses.fields(owner) if f.name == key)
    words = [f.metadata.get(HELP, "").rstrip(".")]
    if flag.note:
        words.append(flag.note)
    if flag.optional:
        words.append(f"(default: {default})")
        default = None
    help_text = " ".join(words) + "."
    annotation = typing.get_type_hints(owner)[key]
    if flag.optional:
        annotation = Optional[annotation]
    option = typer.Option(default, *flag.decls, help=help_text, min=flag.min, max=flag.max)
    return inspect.Parameter(name.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=_plain(annotation))


def _resolve(cls: type, name: str) -> tuple[type, str, Any]:
    """``(class that documents the field, its name there, the default the command starts from)``."""
    head, _, rest = name.partition(".")
    f = next(f for f in dataclasses.fields(cls) if f.name == head)
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = ...  # required
    if not rest:
        return cls, head, default
    schema = f.metadata[SCHEMA]  # `train.epochs`: documented by TrainConfig, defaulted by the stage's mapping
    inner = next(g for g in dataclasses.fields(schema) if g.name == rest)
    return schema, rest, default.get(rest, inner.default)


def _plain(hint: Any) -> Any:
    """``X | None`` as ``Optional[X]``, the spelling every Typer version reads."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return Optional[args[0]]
    return hint


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted names back into mappings: ``{"train.epochs": 3}`` -> ``{"train": {"epochs": 3}}``."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        head, _, rest = name.partition(".")
        if rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[name] = value
    return out


class ConfigCommand(TyperCommand):
    """A Typer command whose config options are added when it is first parsed or asked for help."""

    options: ClassVar[ConfigOptions]
    _derived: click.Command | None = None
    _own: list[click.Parameter]

    @property  # type: ignore[override]
    def params(self) -> list[click.Parameter]:
        """Its own parameters, then the config class's (the first read loads them). One list, kept:
        click appends to it and pops from it in place."""
        self._materialize()
        return self._own

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._own = list(value)

    def invoke(self, ctx: click.Context) -> Any:
        derived = self._materialize()
        raw = {p.name: ctx.params.pop(p.name) for p in derived.params if p.name in ctx.params}
        values = derived.callback(**raw)  # Typer's own conversions (paths, tuples)
        token = _CONFIG_VALUES.set({name.replace("__", "."): value for name, value in values.items()})
        try:
            return super().invoke(ctx)
        finally:
            _CONFIG_VALUES.reset(token)

    def _materialize(self) -> click.Command:
        if self._derived is None:
            def collect(**values: Any) -> dict[str, Any]:
                return values

            collect.__signature__ = inspect.Signature(self.options.parameters())  # type: ignore[attr-defined]
            one = typer.Typer(add_completion=False)
            one.command()(collect)
            self._derived = typer.main.get_command(one)
            self._own.extend(self._derived.params)
        return self._derived


def config_command(group: typer.Typer, name: str | None, options: ConfigOptions,
                   **command_kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(own options..., **config)`` as command ``name`` of ``group`` with the options of
    ``options``; ``fn`` receives the exposed fields' values by field name (dotted for nested ones)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            return fn(**kwargs, **_CONFIG_VALUES.get())

        command.__signature__ = inspect.Signature(own)  # type: ignore[attr-defined]
        cls = type(f"{fn.__name__}_command", (ConfigCommand,), {"options": options})
        group.command(name, cls=cls, **command_kwargs)(command)
        return fn

    return register


__all__ = ["CONFIG_FILE_ONLY", "ConfigCommand", "ConfigOptions", "Flag", "config_command", "nest"]
