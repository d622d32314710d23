"""One method, other options for some layers: a recipe's `layer_options` (e.g. written by `llava-fa allocate`).

sequential.py asks the method it runs for `for_layer(name)` when it has one and compresses that
layer with the answer; everything else (the statistics collected, the name in the report) is
the method's as a whole, so a run with per-layer options is the same run as without, layer for
layer, apart from the options.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from llava_fa.calibration.stats import LayerStats
from llava_fa.errors import ConfigError
from llava_fa.formats.base import CompressedLinear
from llava_fa.methods.base import Method, build_config, get_method


class PerLayerMethod(Method):
    """The recipe's method with its default options, and the same method with other options for the
    layers named in `overrides`. Statistics: whatever any of them needs (so one pass serves all)."""

    def __init__(self, default: Method, overrides: dict[str, Method]):
        super().__init__(default.config)
        self.default, self.overrides = default, overrides
        self.name, self.Config = default.name, default.Config
        self.needs = frozenset().union(default.needs, *(m.needs for m in overrides.values()))

    def for_layer(self, name: str) -> Method:
        return self.overrides.get(name, self.default)

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        self.for_layer(name).check_layer(name, linear)

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> CompressedLinear:
        return self.default.compress(weight, stats, bias)  # a caller that does not name the layer


def build_layer_methods(method: str, options: dict, layer_options: dict[str, dict]) -> dict[str, Method]:
    """The method of each overridden layer: `options` with the layer's own on top, checked like `options`."""
    methods = {}
    for layer, own in layer_options.items():
        try:
            config = build_config(method, {**options, **own})
        except ConfigError as e:
            raise ConfigError(f"layer_options[{layer}]: {e}. Fix: give that layer options of method "
                              f"{method!r} (`llava-fa compress --help-method {method}` lists them)") from None
        methods[layer] = get_method(method)(config)
    return methods


def with_layer_options(default: Method, method: str, options: dict, layer_options: dict[str, dict]) -> Method:
    """`default` itself when no layer is overridden (the run is then exactly what it was before)."""
    if not layer_options:
        return default
    return PerLayerMethod(default, build_layer_methods(method, options, layer_options))


def check_layer_names(layer_options: dict[str, dict], names: list[str]) -> None:
    """Every overridden layer must be one the recipe selects: a typo would silently keep the default."""
    selected = set(names)
    unknown = [layer for layer in layer_options if layer not in selected]
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"layer_options names {len(unknown)} layer(s) the recipe does not select, first "
                      f"{unknown[0]!r}{hint}. Fix: use the full names of selected linear layers (the compress "
                      f"report lists them), or widen `targets`")
