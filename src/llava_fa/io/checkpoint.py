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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llava_fa.errors import CheckpointError
from llava_fa.formats import CompressedLinear
from llava_fa.io.files import atomic_dir, read_header
from llava_fa.io.hf import LlavaFAConfig, LlavaFAHfQuantizer, register
from llava_fa.io.modules import REPORT, module_entry, verify_files, write_manifest


# --- save / load ---------------------------------------------------------------------------------

def quantization_config(model: nn.Module, method: str, method_config: dict, targets: list[str], ignore: list[str]):
    modules = {name: module_entry(m) for name, m in model.named_modules() if isinstance(m, CompressedLinear)}
    if not modules:
        raise CheckpointError("the model holds no compressed module to save")
    return LlavaFAConfig(method=method, method_config=method_config, modules=modules, targets=targets, ignore=ignore)


def save_compressed(model: nn.Module, out: Path, qconfig, processor=None, report: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Write the compressed model (and processor) to `out` atomically."""
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
    """A model directory, compressed by llava-fa or not, with clear errors for broken ones.

    `dtype` goes to `from_pretrained` as is ("auto": the dtype the checkpoint stores); commands
    choose it with `llava_fa.runtime.resolve_dtype`, which knows the device the model computes on."""
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


def load_model_and_processor(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = "auto"):
    """`load_model` and the processor (or tokenizer) saved with it, which running the model needs."""
    model = load_model(path, device, dtype)
    processor = load_processor(path)
    if processor is None:
        raise CheckpointError(f"{path} has no processor or tokenizer files")
    return model, processor
