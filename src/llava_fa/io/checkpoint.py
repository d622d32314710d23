"""Compressed checkpoints: safetensors + config.json with a `quantization_config`, written atomically.

Layout of a checkpoint directory:
- config.json: the model config, `quantization_config` = {quant_method: "llava_fa", method,
  method_config, modules: {name: {format, in_features, out_features, bias, params}}, ...};
- model.safetensors (or shards + index): every tensor; a compressed module `m` stores its buffers
  as `m.<buffer>` (e.g. `m.qweight`, `m.scales`, `m.qzeros`) and its bias as `m.bias`;
- llava_fa_manifest.json: size and sha256 of each weight file, so truncation and corruption
  are caught with a clear message before anything is loaded;
- the processor / tokenizer files, generation_config.json, compress_report.json.
Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llava_fa.errors import CheckpointError
from llava_fa.io.files import atomic_dir, read_header, sha256_of, stored_key
from llava_fa.formats import CompressedLinear, get_format

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
    """Swap each listed nn.Linear for an empty module of its stored format (same device as before)."""
    modules = getattr(qconfig, "modules", None)
    if not isinstance(modules, dict) or not modules:
        raise CheckpointError("quantization_config lists no compressed modules")
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


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --- safetensors checks --------------------------------------------------------------------------

def write_manifest(directory: Path) -> None:
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    manifest = {"files": {f: {"bytes": (directory / f).stat().st_size, "sha256": sha256_of(directory / f)}
                          for f in files}}
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


# --- save / load ---------------------------------------------------------------------------------

def quantization_config(model: nn.Module, method: str, method_config: dict, targets: list[str], ignore: list[str]):
    from llava_fa.io.hf import LlavaFAConfig

    modules = {name: module_entry(m) for name, m in model.named_modules() if isinstance(m, CompressedLinear)}
    if not modules:
        raise CheckpointError("the model holds no compressed module to save")
    return LlavaFAConfig(method=method, method_config=method_config, modules=modules, targets=targets, ignore=ignore)


def save_compressed(model: nn.Module, out: Path, qconfig, processor=None, report: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Write the compressed model (and processor) to `out` atomically."""
    from llava_fa.io.hf import LlavaFAHfQuantizer, register

    register()
    model.config.quantization_config = qconfig
    model.hf_quantizer = LlavaFAHfQuantizer(qconfig, pre_quantized=True)
    with atomic_dir(out, overwrite) as tmp:
        # save_original_format=False: keys stay the in-memory module names that quantization_config uses.
        model.save_pretrained(tmp, save_original_format=False)
        if processor is not None:
            processor.save_pretrained(tmp)
        if report is not None:
            (tmp / REPORT).write_text(json.dumps(report, indent=1) + "\n")
        stray = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if stray:
            raise CheckpointError(f"refusing to write pickled files {stray}")
        write_manifest(tmp)
    return Path(out)


def read_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass the folder written by `llava-fa compress`")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"missing file {cfg}: {path} is not a model checkpoint")
    try:
        return json.loads(cfg.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg} is not valid JSON ({e}); the checkpoint is corrupted") from None


def model_class(config: dict[str, Any]):
    import transformers

    for arch in config.get("architectures") or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if "vision_config" in config else AutoModelForCausalLM


def load_model(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = "auto"):
    """A model directory, compressed by llava-fa or not, with clear errors for broken ones."""
    from llava_fa.io.hf import register

    register()
    path = Path(path)
    config = read_config(path)
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "llava_fa":
        verify_files(path)  # gives the message before transformers' own, less specific, errors
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files and not list(path.glob("*.bin")):
            raise CheckpointError(f"{path} holds no weight files (*.safetensors)")
        for f in files:
            read_header(f, fix="download or rebuild the model")  # clear, unlike safetensors' own error
    try:
        model = model_class(config).from_pretrained(path, dtype=dtype)
    except CheckpointError:
        raise
    except Exception as e:  # whatever transformers/safetensors raise for a broken folder
        raise CheckpointError(f"cannot load {path}: {type(e).__name__}: {e}") from None
    return model.to(device).eval()


def load_processor(path: Path):
    """The processor saved with the model, else its tokenizer, else None."""
    from transformers import AutoProcessor, AutoTokenizer

    for loader in (AutoProcessor, AutoTokenizer):
        try:
            return loader.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
