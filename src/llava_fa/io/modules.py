"""Compressed modules in a checkpoint: their `quantization_config` entries, the skeleton swap done
before transformers fills the weights, and the integrity checks of the weight files.

Used by the transformers integration (io/hf.py) when loading and by io/checkpoint.py when saving.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llava_fa.errors import CheckpointError
from llava_fa.formats import CompressedLinear, get_format, unfuse_experts
from llava_fa.io.files import read_header, sha256_of, stored_key

log = logging.getLogger("llava_fa")

MANIFEST = "llava_fa_manifest.json"
REPORT = "compress_report.json"

# safetensors dtype names of the tensors a format stores.
_ST_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
              "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "F16": torch.float16,
              "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


# --- module entries ------------------------------------------------------------------------------

def module_entry(module: CompressedLinear) -> dict[str, Any]:
    return {"format": module.format, "in_features": module.in_features, "out_features": module.out_features,
            "bias": module.bias is not None, "params": module.params()}


def build_module(name: str, entry: dict[str, Any]) -> CompressedLinear:
    try:
        cls = get_format(entry["format"])
        return cls.from_config(int(entry["in_features"]), int(entry["out_features"]), bool(entry["bias"]),
                               dict(entry.get("params", {})))
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"bad quantization_config entry for {name}: {e!r}") from None


def install_modules(model: nn.Module, qconfig) -> None:
    """Swap each listed nn.Linear for an empty module of its stored format (same device as before);
    fused MoE experts that entries point into are linearized first (formats/experts.py)."""
    modules = getattr(qconfig, "modules", None)
    if not isinstance(modules, dict) or not modules:
        raise CheckpointError("quantization_config lists no compressed modules")
    # Expert linears ("<experts>.gate_up_proj.<e>") live in the LinearExperts that replaced the
    # model's fused experts module when it was compressed: rebuild that container first.
    unfuse_experts(model, modules)
    for name, entry in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"the checkpoint compresses {name}, which {type(model).__name__} does not have; "
                                  f"was it saved from another architecture?") from None
        new = build_module(name, entry)
        if isinstance(old, nn.Linear):
            if (old.in_features, old.out_features) != (new.in_features, new.out_features):
                raise CheckpointError(f"{name}: checkpoint shape {new.out_features}x{new.in_features} differs from "
                                      f"the model's {old.out_features}x{old.in_features}")
            device = old.weight.device
        elif isinstance(old, CompressedLinear):
            device = next(iter(old.buffers())).device
        else:
            raise CheckpointError(f"{name} is a {type(old).__name__}, not a linear layer")
        set_module(model, name, new.to(device))
        mark_initialized(model, name)


def mark_initialized(model: nn.Module, name: str) -> None:
    """Keep transformers from initializing the parent of a compressed layer: a family's
    `_init_weights` may reach into the children of a module it knows (SigLIP's attention draws
    `q_proj.weight`), which a compressed layer does not have; its tensors come from the checkpoint."""
    parent_name = name.rpartition(".")[0]
    model.get_submodule(name)._is_hf_initialized = True
    parent = model.get_submodule(parent_name)
    if parent_name and not any(True for _ in parent.parameters(recurse=False)):  # nothing of its own to set
        parent._is_hf_initialized = True


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --- safetensors checks --------------------------------------------------------------------------

def write_manifest(directory: Path, known: dict[str, str] | None = None) -> None:
    """Size and sha256 of every weight file; `known`: digests already taken as the files were written."""
    known = known or {}
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    manifest = {"files": {f: {"bytes": (directory / f).stat().st_size,
                              "sha256": known.get(f) or sha256_of(directory / f)} for f in files}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def verify_files(directory: Path) -> dict[str, dict]:
    """Check every weight file (complete, and matching the manifest's checksum); return {name: header}.

    A checkpoint re-saved by transformers' save_pretrained has no manifest: its files are still
    checked for truncation and, at load, for every tensor of every compressed module.
    """
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        log.warning("%s has no %s (re-saved outside llava-fa?): checksums not verified", directory, MANIFEST)
        return {p.name: read_header(p) for p in sorted(directory.glob("*.safetensors"))}
    try:
        manifest = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath} is corrupted ({e!r})") from None
    headers = {}
    for fname, info in manifest.items():
        path = directory / fname
        headers[fname] = read_header(path)
        if path.stat().st_size != info["bytes"] or sha256_of(path) != info["sha256"]:
            raise CheckpointError(f"{path} does not match its checksum in {MANIFEST}: the file is corrupted. "
                                  f"Fix: compress the model again")
    return headers


def check_checkpoint_files(checkpoint_files: list[str], qconfig, model: nn.Module) -> None:
    """Before loading: files intact, and every tensor of every compressed module present with its shape."""
    directory = Path(checkpoint_files[0]).parent
    headers = verify_files(directory)
    missing_files = [f for f in checkpoint_files if Path(f).name not in headers]
    if missing_files:
        raise CheckpointError(f"weight files not covered by {MANIFEST}: {missing_files}")
    stored = {k: v for h in headers.values() for k, v in h.items() if k != "__metadata__"}
    for name, entry in qconfig.modules.items():
        skeleton = build_module(name, entry)
        for tname, t in skeleton.state_dict().items():
            key = stored_key(stored, f"{name}.{tname}")
            if key is None:
                raise CheckpointError(f"the checkpoint lacks tensor {name}.{tname}; the file is incomplete. "
                                      f"Fix: compress the model again")
            info = stored[key]
            want_dtype = t.dtype if tname != "bias" else None
            if list(info["shape"]) != list(t.shape) or (want_dtype and _ST_DTYPES.get(info["dtype"]) != want_dtype):
                raise CheckpointError(f"tensor {key} is {info['dtype']}{info['shape']}, expected "
                                      f"{t.dtype}{list(t.shape)}: the checkpoint does not match its config")


def check_loaded(model: nn.Module, qconfig) -> None:
    for name in qconfig.modules:
        mod = model.get_submodule(name)
        if not isinstance(mod, CompressedLinear):
            raise CheckpointError(f"{name} was not loaded as a compressed module")
        for tname, t in mod.state_dict().items():
            if t.device.type == "meta":
                raise CheckpointError(f"{name}.{tname} was not loaded from the checkpoint")
