"""The method interface and the registry of methods.

A method declares which calibration statistics it needs (`needs`), takes one weight with those
statistics and returns a compressed module of some storage format. Its options are one dataclass
(`Config`); `build_config` turns flags, YAML or JSON values into it and rejects unknown options.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import sys
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from llava_fa.calibration.stats import STATS, LayerStats
from llava_fa.errors import ConfigError
from llava_fa.formats.base import CompressedLinear

def option(default: Any, help: str) -> Any:
    """A config field with its help text: `llava-fa compress --help-method NAME` prints it."""
    return field(default=default, metadata={"help": help})


@dataclass
class MethodConfig:
    """Base of method configs: subclasses are dataclasses whose fields are the method's options."""

    def check(self) -> None:
        """Raise ConfigError for values out of range (called by build_config)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Method(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.Config()

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        """Raise ConfigError before any work starts if this layer cannot be compressed."""

    @abstractmethod
    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> CompressedLinear:
        """Compress a (out_features, in_features) weight; `stats` holds what `needs` asked for."""


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    # Short lowercase words, hyphenated where the literature is (pb-llm, arb-x, svd-llm).
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", getattr(cls, "name", "")):
        raise ValueError(f"method name {getattr(cls, 'name', None)!r} must be a short lowercase word")
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)):
        raise TypeError(f"{cls.__name__}.Config must be a MethodConfig dataclass")
    unknown = set(cls.needs) - set(STATS)
    if unknown:
        raise ValueError(f"{cls.__name__} needs unknown statistics {sorted(unknown)}; known: {STATS}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is already registered by {METHODS[cls.name].__name__}")
    METHODS[cls.name] = cls
    return cls


def discover() -> None:
    """Import every method subpackage of `llava_fa.methods`: adding a method is adding a folder."""
    folder = Path(__file__).parent  # this package's folder, read without importing the package
    for info in pkgutil.iter_modules([str(folder)]):
        if info.ispkg:
            importlib.import_module(f"{__package__}.{info.name}")


def available_methods() -> list[str]:
    discover()
    return sorted(METHODS)


def get_method(name: str) -> type[Method]:
    discover()
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def describe_method(name: str) -> str:
    """What `--help-method NAME` prints: the method's summary, the statistics it needs and every
    option (`-O KEY=VALUE`) with its type, default and help text."""
    cls = get_method(name)
    doc = (cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or "").strip()
    summary = doc.split("\n\n")[0].replace("\n", " ").removeprefix(f"`{name}`:").strip()
    needs = ", ".join(sorted(cls.needs)) or "none (calibration-free by default)"
    lines = [f"{name}: {summary}", f"calibration statistics: {needs}", "options (-O KEY=VALUE):"]
    hints = typing.get_type_hints(cls.Config)
    for f in dataclasses.fields(cls.Config):
        kind = _type_name(hints[f.name])
        help_text = f.metadata.get("help", "")
        lines.append(f"  {f.name:<24} {kind:<28} default {f.default!r:<10} {help_text}".rstrip())
    from llava_fa.methods.presets import describe_presets  # lazy: the table is only read for help

    if presets := describe_presets(name):
        lines.append(presets)
    return "\n".join(lines)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "|".join(map(str, typing.get_args(hint)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint)).replace("NoneType", "none")
    return getattr(hint, "__name__", str(hint))


def build_config(method: str, options: dict[str, Any] | None = None) -> MethodConfig:
    """The method's Config from a dict of options (strings from the CLI are converted)."""
    cls = get_method(method).Config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in (options or {}).items():
        key = key.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"method {method!r} has no option {key!r}; its options are: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], f"{method} option {key}")
    config = cls(**kwargs)
    config.check()
    return config


def _convert(value: Any, hint: Any, what: str) -> Any:
    """Coerce a YAML/JSON/CLI value to the annotated type (bool, int, float, str, Literal, Optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(value, args[0], what)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) and ("off" if not value else "on") in allowed:
            value = "off" if not value else "on"  # YAML 1.1 reads a bare `off` / `on` as a boolean
        if value not in allowed:
            raise ConfigError(f"{what} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} expects {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value
