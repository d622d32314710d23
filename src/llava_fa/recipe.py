"""A compression recipe: the method, its options, the module selection and the calibration data.

From CLI flags, or from a YAML/JSON file such as:

    method: gptq
    options: {bits: 3, group_size: 64, act_order: true}
    targets: ["re:model\\.language_model\\.layers\\."]   # omitted: the language decoder's linears
    ignore: ["re:.*down_proj"]
    vision: false        # add the vision tower's linear layers
    projector: false     # add the projector's
    calibration: {source: auto, nsamples: 32, seqlen: 256, seed: 0}
    layer_options:       # per-layer overrides of `options` (e.g. written by `llava-fa allocate`)
      model.language_model.layers.0.mlp.down_proj: {bits: 4}
    allocation: {...}    # informational: how `llava-fa allocate` chose layer_options; compress ignores it

Flags given on the command line override the file (`-O` sets `options`; a layer's own
`layer_options` still win over them for that layer).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_fa.errors import ConfigError


@dataclass
class Calibration:
    source: str = "auto"
    nsamples: int = 32  # x seqlen 256: the testbed compresses on 2 CPU cores in minutes
    seqlen: int = 256
    seed: int = 0


@dataclass
class Recipe:
    method: str = "rtn"
    options: dict[str, Any] = field(default_factory=dict)
    targets: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    vision: bool = False
    projector: bool = False
    calibration: Calibration = field(default_factory=Calibration)
    # layer name -> options that replace `options` for that layer alone. Checked against the method
    # here (keys) and against the model's selected layers once it is loaded (names).
    layer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    allocation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "recipe") -> "Recipe":
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        d = dict(d)
        cal = d.pop("calibration", None) or {}
        if not isinstance(cal, dict):
            raise ConfigError(f"{where}: 'calibration' must be a mapping")
        cal_known = {f.name for f in dataclasses.fields(Calibration)}
        bad = sorted(set(cal) - cal_known)
        if bad:
            raise ConfigError(f"{where}: unknown calibration key(s) {', '.join(bad)}; "
                              f"known: {', '.join(sorted(cal_known))}")
        for key in ("targets", "ignore"):
            if d.get(key) is not None and not (isinstance(d[key], list) and all(isinstance(p, str) for p in d[key])):
                raise ConfigError(f"{where}: '{key}' must be a list of strings")
        if "options" in d and not isinstance(d["options"] or {}, dict):
            raise ConfigError(f"{where}: 'options' must be a mapping of method options")
        d["options"] = dict(d.get("options") or {})
        d["layer_options"] = check_layer_options(d.get("layer_options"), where)
        if d.get("allocation") is not None and not isinstance(d["allocation"], dict):
            raise ConfigError(f"{where}: 'allocation' must be a mapping (it is written by `llava-fa allocate`)")
        d["ignore"] = list(d.get("ignore") or [])
        return cls(**d, calibration=Calibration(**cal))

    @classmethod
    def from_file(cls, path: Path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # yaml/json parser errors carry the position
            raise ConfigError(f"cannot parse recipe {path}: {e}") from None
        return cls.from_dict(data or {}, where=str(path))


def check_layer_options(value: Any, where: str = "recipe") -> dict[str, dict[str, Any]]:
    """`layer_options` as {layer name: {option: value}}; the option names are checked against the
    method later (pipeline.check_recipe), as `options` are."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'layer_options' must be a mapping of layer name to options, e.g. "
                          f"layer_options: {{model.layers.0.mlp.down_proj: {{bits: 4}}}}")
    out = {}
    for layer, options in value.items():
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"{where}: layer_options has a key {layer!r} that is not a layer name. Fix: use "
                              f"the module's full name, e.g. model.layers.0.mlp.down_proj")
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ConfigError(f"{where}: layer_options[{layer}] must be a mapping of method options, e.g. "
                              f"{{bits: 4}}; got {options!r}")
        out[layer] = dict(options)
    return out
