"""Model size: bytes on disk, parameters, and bits per weight of compressed and decoder linears."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from llava_fa.io.files import read_header, stored_key

# Bits per element of the safetensors dtype names.
SAFETENSORS_BITS = {"F64": 64, "I64": 64, "U64": 64, "F32": 32, "I32": 32, "U32": 32, "F16": 16, "BF16": 16,
                    "I16": 16, "U16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "I8": 8, "U8": 8, "BOOL": 8}


def is_compressed(module: nn.Module) -> bool:
    """The protocol of compressed layers: storage_bits() (all stored bits, metadata included)."""
    return callable(getattr(module, "storage_bits", None)) and hasattr(module, "in_features") \
        and hasattr(module, "out_features")


def stored_bits_per_element(model_dir: Path) -> dict[str, int]:
    """Tensor name -> bits per element, read from the safetensors headers (no tensor data)."""
    bits = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        header = read_header(file)
        bits.update({k: SAFETENSORS_BITS.get(v["dtype"], 0) for k, v in header.items() if k != "__metadata__"})
    return bits


def stored_key_bits(bits: dict[str, int], key: str) -> int | None:
    """Bits per element of `key` as stored (checkpoint names may carry another prefix, see stored_key)."""
    hit = stored_key(bits, key)
    return None if hit is None else bits[hit]


def _decoder_prefix(model: nn.Module) -> str:
    """Dotted name of the language decoder (without the LM head), "" when it is the model itself."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, ValueError, NotImplementedError):
        return ""
    return next((name for name, m in model.named_modules() if m is decoder), "")


def _weight_bits(name: str, module: nn.Module, stored: dict[str, int]) -> int:
    if is_compressed(module):
        return int(module.storage_bits())
    per = stored_key_bits(stored, f"{name}.weight") or module.weight.element_size() * 8
    return per * module.weight.numel()


def _bpw(bits: int, weights: int) -> float | None:
    return bits / weights if weights else None


def model_size(model_dir: str | Path, model: nn.Module) -> dict:
    """Disk bytes, parameter count, and bits per weight.

    Compressed modules (see `is_compressed`) report bpw = storage_bits / (in * out); an
    uncompressed linear counts its weight at the dtype it is stored in on disk (16 or 32).
    """
    files = sorted(Path(model_dir).glob("*.safetensors"))
    stored = stored_bits_per_element(Path(model_dir))
    compressed, c_bits, c_weights = {}, 0, 0
    d_bits, d_weights, d_count = 0, 0, 0
    prefix = _decoder_prefix(model)
    skip: list[str] = []  # children of a compressed module are part of its storage
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if not (is_compressed(m) or isinstance(m, nn.Linear)):
            continue
        weights = m.in_features * m.out_features
        bits = _weight_bits(name, m, stored)
        if is_compressed(m):
            skip.append(name)
            compressed[name] = {"in_features": m.in_features, "out_features": m.out_features,
                                "bits": bits, "bpw": bits / weights}
            c_bits, c_weights = c_bits + bits, c_weights + weights
        if name.startswith(prefix + ".") or not prefix:
            d_bits, d_weights, d_count = d_bits + bits, d_weights + weights, d_count + 1
    return {
        "disk_bytes": sum(f.stat().st_size for f in files),
        "safetensors_files": len(files),
        "params": sum(p.numel() for p in model.parameters()),
        "compressed": {"count": len(compressed), "weights": c_weights, "bits": c_bits,
                       "bpw": _bpw(c_bits, c_weights), "modules": compressed},
        "decoder_linear": {"prefix": prefix, "count": d_count, "weights": d_weights, "bits": d_bits,
                           "bpw": _bpw(d_bits, d_weights)},
    }
