"""Export of `affine` checkpoints (rtn, gptq, hqq codes) to compressed-tensors' `pack-quantized` format.

vLLM and llm-compressor load that format; transformers too, with `compressed-tensors` installed. The
codes are carried over, not re-quantized, so the exported weights are exactly ours:

- our codes c in [0, 2^b - 1] with w = scale * (c - z) become compressed-tensors' signed codes
  q = c - 2^(b-1) with zero point zp = z - 2^(b-1): scale * (q - zp) is the same weight;
- `weight_packed` int32 (out, ceil(in * b / 32)): q packed along the input axis, `weight_zero_point`
  int32 packed along the output axis (absent when symmetric: our symmetric zero is 2^(b-1), i.e.
  zp = 0), `weight_scale` (out, in / group) float16 (our scales are float16 values already, so a
  float16 or float32 model reads them exactly), `weight_shape` (2,);
- one config group per (bits, group size, symmetry), targeting its modules by exact name.

Other formats (fourier, binary, lowrank, hadamard, higgs) have no compressed-tensors counterpart and are
refused with a message naming them. Everything that is not a compressed module is copied as is.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llava_fa.errors import CheckpointError, ConfigError
from llava_fa.formats import AffineLinear
from llava_fa.io.files import atomic_dir, stored_key
from llava_fa.io.modules import MANIFEST, build_module, verify_files

FORMAT = "pack-quantized"
# Files of ours that mean nothing to a compressed-tensors reader (the manifest lists our files).
_NOT_COPIED = {MANIFEST, "config.json"}


def export_compressed_tensors(src: Path, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write `src` (a llava-fa checkpoint of `affine` layers) to `out` in compressed-tensors' format.

    Returns the compressed-tensors `quantization_config` written into out/config.json."""
    src, out = Path(src), Path(out)
    config = _read_llava_fa_config(src)
    modules = config["quantization_config"]["modules"]
    refused = sorted({entry["format"] for entry in modules.values()} - {AffineLinear.format})
    if refused:
        raise ConfigError(f"{src}: layers of format {', '.join(refused)} have no compressed-tensors counterpart; "
                          f"only `affine` checkpoints (rtn, gptq, hqq) export. Fix: compress with one of those")
    verify_files(src)
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    groups: dict[tuple[int, int, bool], list[str]] = {}
    for name, entry in modules.items():
        layer = _load_layer(name, entry, tensors)
        tensors.update({f"{name}.{k}": v for k, v in pack_quantized(layer).items()})
        groups.setdefault((layer.bits, layer.group_size, layer.sym), []).append(name)
    qconfig = quantization_config(groups)
    config["quantization_config"] = qconfig
    with atomic_dir(out, overwrite) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for path in src.iterdir():
            if path.is_file() and path.suffix != ".safetensors" and path.name not in _NOT_COPIED:
                shutil.copy2(path, tmp / path.name)
    return qconfig


def pack_quantized(layer: AffineLinear) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one `affine` layer (see the module docstring)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    offset = 1 << (layer.bits - 1)
    scale, zero = layer.scale_zero()
    codes = (layer.codes() - offset).to(torch.int8)
    out = {"weight_packed": pack_to_int32(codes, layer.bits),
           "weight_scale": scale,  # float32 holding float16 values: readers dequantize exactly in float32
           "weight_shape": torch.tensor([layer.out_features, layer.in_features])}
    if not layer.sym:
        zp = (zero.round() - offset).to(torch.int8)
        out["weight_zero_point"] = pack_to_int32(zp, layer.bits, packed_dim=0)
    return out


def quantization_config(groups: dict[tuple[int, int, bool], list[str]]) -> dict[str, Any]:
    config_groups = {}
    for i, ((bits, group_size, sym), names) in enumerate(sorted(groups.items())):
        pattern = "|".join(re.escape(n) for n in sorted(names))
        config_groups[f"group_{i}"] = {
            "targets": [f"re:^({pattern})$"],
            "weights": {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": "group",
                        "group_size": group_size, "dynamic": False, "actorder": None},
            "input_activations": None, "output_activations": None}
    return {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
            "config_groups": config_groups, "ignore": [], "kv_cache_scheme": None}


def _read_llava_fa_config(src: Path) -> dict[str, Any]:
    from llava_fa.io.checkpoint import read_config

    config = read_config(src)
    qc = config.get("quantization_config")
    if not (isinstance(qc, dict) and qc.get("quant_method") == "llava_fa" and isinstance(qc.get("modules"), dict)):
        raise ConfigError(f"{src} is not a llava-fa checkpoint (no llava_fa quantization_config in config.json). "
                          f"Fix: pass a folder written by `llava-fa compress`")
    return config


def _load_layer(name: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> AffineLinear:
    """The stored layer `name`, its tensors taken out of `tensors` (the export replaces them)."""
    layer = build_module(name, entry)
    state = {}
    for key in layer.state_dict():
        stored = stored_key(tensors, f"{name}.{key}")
        if stored is None:
            raise CheckpointError(f"the checkpoint lacks tensor {name}.{key}. Fix: compress the model again")
        state[key] = tensors.pop(stored) if key != "bias" else tensors[stored]
    layer.load_state_dict(state)
    return layer
