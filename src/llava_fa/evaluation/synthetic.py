"""Compressed decoders for speed measurements, built without calibration or compression methods.

`llava-fa bench-decode --synthetic 7b` measures how fast each stored format decodes at 7B scale.
What runs at inference is the format (its buffers and forward backends), not the method that chose
the codes, so the codes here come from fast data-free encoders of random weights: seconds on a GPU
instead of the minutes a calibrated method takes. The records say so: their figures are speed and
memory, never quality.

- `random_llama`: a LlamaForCausalLM of Llama-2-7B's shapes (or smaller ones), random weights
  (std 0.02, transformers' own initialization), built on the device in the requested dtype;
- `parse_formats`: "bf16,affine:bits=4,fourier:mag_bits=3:phase_bits=3,binary", each entry a format
  and its options (`FORMAT_OPTIONS` lists them with their defaults);
- `encode_linear`: one weight into a layer of a format: `affine` by round-to-nearest (the `rtn`
  method), `fourier` by quantizing the weight's spectrum (structure "quant": rank 0, PolarQuant codes,
  transform rfft along the input axis or rfft2), `binary` by sign bits with a per-row, per-block mean
  and scale and an order-2 residual on the highest-norm columns (the layout of BiLLM/ARB/SAB's
  salient columns, without their searches);
- `compress_decoder`: every linear of the decoder layers swapped for its encoded layer
  (`io.modules.set_module`, the pipeline's own swap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats import AffineLinear, BinaryLinear, CompressedLinear, FourierLinear
from llava_fa.formats.binary import BinaryParts

LLAMA_7B = {"layers": 32, "hidden": 4096, "intermediate": 11008, "heads": 32, "vocab": 32000}
SYNTHETIC_MODELS = {"7b": LLAMA_7B}
NOTE = ("synthetic: random weights (std 0.02) and data-free codes (round-to-nearest, spectrum codes, sign "
        "bits): speed and memory only, not quality")

DENSE = "bf16"  # the uncompressed baseline's name in a format list (the model's own dtype)
# Options of each format and their defaults; a value's type is its default's.
FORMAT_OPTIONS: dict[str, dict[str, Any]] = {
    DENSE: {},
    "affine": {"bits": 4, "group_size": 128, "sym": False},
    "fourier": {"mag_bits": 3, "phase_bits": 3, "real_bits": 3, "group_size": 64, "transform": "rfft"},
    "binary": {"block_size": 128, "salient_frac": 0.05},
}


@dataclass(frozen=True)
class FormatSpec:
    format: str
    options: dict[str, Any] = field(default_factory=dict)  # all of the format's options, defaults filled in
    text: str = ""  # the --formats entry as written

    @property
    def name(self) -> str:
        """A file-name-safe label of the entry: affine:bits=3 -> affine_bits3."""
        text = self.text or self.format
        return re.sub(r"[^A-Za-z0-9_.-]", "", text.replace(":", "_").replace(".", "p"))


def _convert(key: str, value: str, default: Any, entry: str) -> Any:
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return type(default)(value)
    except ValueError:
        raise ConfigError(f"--formats {entry!r}: {key} must be a {type(default).__name__}, got {value!r}. "
                          f"Fix: e.g. {key}={default}") from None


def parse_format(entry: str) -> FormatSpec:
    name, *pairs = entry.strip().split(":")
    if name not in FORMAT_OPTIONS:
        raise ConfigError(f"--formats: unknown format {name!r}. Fix: use {', '.join(FORMAT_OPTIONS)}")
    options = dict(FORMAT_OPTIONS[name])
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in options:
            known = ", ".join(options) or "none"
            raise ConfigError(f"--formats {entry!r}: {pair!r} is not KEY=VALUE with a key of {name} "
                              f"(its options: {known}). Fix: e.g. affine:bits=3:group_size=64")
        options[key] = _convert(key, value, options[key], entry)
    spec = FormatSpec(name, options, entry.strip())
    check_format(spec, entry)
    return spec


def parse_formats(text: str) -> list[FormatSpec]:
    """The --formats list, every entry checked (a small layer of each is encoded)."""
    entries = [e for e in (text or "").split(",") if e.strip()]
    if not entries:
        raise ConfigError("--formats is empty. Fix: e.g. --formats bf16,affine:bits=4")
    specs = [parse_format(e) for e in entries]
    names = [s.name for s in specs]
    same = {(s.format, tuple(s.options.items())) for s in specs}
    if len(set(names)) != len(names) or len(same) != len(specs):
        raise ConfigError(f"--formats lists a format twice ({', '.join(names)}). Fix: list each once")
    return specs


def check_format(spec: FormatSpec, entry: str) -> None:
    """Reject options no layer can have, by encoding a small random weight (milliseconds)."""
    o = spec.options
    if spec.format == "binary" and not (o["block_size"] >= 8 and 0 <= o["salient_frac"] < 0.5):
        raise ConfigError(f"--formats {entry!r}: binary needs block_size >= 8 and salient_frac in [0, 0.5). "
                          "Fix: e.g. binary:block_size=128:salient_frac=0.05")
    if spec.format == "fourier" and o["transform"] not in ("rfft", "rfft2"):
        raise ConfigError(f"--formats {entry!r}: transform must be rfft or rfft2. Fix: fourier:transform=rfft2")
    if spec.format == DENSE:
        return
    try:
        encode_linear(torch.randn(16, 64) * 0.02, None, spec)
    except ValueError as e:  # ConfigErrors included
        fix = "" if "Fix:" in str(e) else ". Fix: change that option"
        raise ConfigError(f"--formats {entry!r}: {e}{fix}") from None


# --- encoders ------------------------------------------------------------------------------------

def encode_affine(W: torch.Tensor, bias: torch.Tensor | None, o: dict[str, Any]) -> AffineLinear:
    """Round-to-nearest codes of groups along the input axis: the `rtn` method."""
    from llava_fa.methods.base import build_config, get_method

    rtn = get_method("rtn")(build_config("rtn", {"bits": o["bits"], "group_size": o["group_size"], "sym": o["sym"]}))
    return rtn.compress(W, None, bias)


def encode_fourier(W: torch.Tensor, bias: torch.Tensor | None, o: dict[str, Any]) -> FourierLinear:
    """PolarQuant codes of the weight's spectrum, no low-rank part (fa's structure "quant")."""
    from llava_fa.transforms import fourier as ft

    m, n = W.shape
    layer = FourierLinear(n, m, bias is not None, transform=o["transform"], rank=0, mag_bits=o["mag_bits"],
                          phase_bits=o["phase_bits"], real_bits=o["real_bits"], group_size=o["group_size"])
    layer = layer.to(W.device)
    layer.set_codes(ft.forward(W.float(), o["transform"]))
    return layer.set_bias(bias)


def _block_mean(X: torch.Tensor, cols: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of X (out, in) over the columns `cols` (in,) of each block of `block` columns: (out, n_blocks)."""
    n = X.shape[1]
    pad = -n % block
    w = F.pad(cols.float(), (0, pad)).view(-1, block)
    s = F.pad(X * cols.float(), (0, pad)).view(X.shape[0], -1, block).sum(-1)
    return s / w.sum(-1).clamp_min(1)


def _per_column(v: torch.Tensor, block: int, n: int) -> torch.Tensor:
    return v.repeat_interleave(block, dim=1)[:, :n]


def binary_parts(W: torch.Tensor, block: int, salient_frac: float) -> BinaryParts:
    """Signs around a per-row, per-block mean with scale mean|w - mean|, in two groups (the other
    columns, and the `salient_frac` highest-norm columns, which get an order-2 residual)."""
    W = W.float()
    out_f, n = W.shape
    salient = torch.zeros(n, dtype=torch.bool, device=W.device)
    salient[W.norm(dim=0).topk(int(round(salient_frac * n))).indices] = True
    means, scales = [], []
    signs = torch.zeros_like(W, dtype=torch.bool)
    approx = torch.zeros_like(W)
    for cols in (~salient, salient):
        mu = _block_mean(W, cols, block)
        centred = W - _per_column(mu, block, n)
        sc = _block_mean(centred.abs(), cols, block)
        signs = torch.where(cols[None, :], centred > 0, signs)
        approx = torch.where(cols[None, :], _per_column(mu, block, n) + _per_column(sc, block, n) *
                             (centred > 0).float().mul(2).sub(1), approx)
        means.append(mu)
        scales.append(sc)
    res = W - approx
    res_mean = _block_mean(res, salient, block)
    res_c = res - _per_column(res_mean, block, n)
    res_scale = _block_mean(res_c.abs(), salient, block)
    return BinaryParts(signs=signs, row_scales=torch.stack(scales, -1), means=torch.stack(means, -1),
                       salient=salient, res_signs_full=res_c > 0, res_scales=res_scale, res_means=res_mean)


def encode_binary(W: torch.Tensor, bias: torch.Tensor | None, o: dict[str, Any]) -> BinaryLinear:
    parts = binary_parts(W, o["block_size"], o["salient_frac"])
    return BinaryLinear.from_parts(parts, block_size=o["block_size"], bias=bias)


ENCODERS = {"affine": encode_affine, "fourier": encode_fourier, "binary": encode_binary}


@torch.no_grad()
def encode_linear(W: torch.Tensor, bias: torch.Tensor | None, spec: FormatSpec) -> CompressedLinear:
    """A layer of `spec`'s format holding data-free codes of the (out, in) weight W, on W's device."""
    return ENCODERS[spec.format](W, bias, spec.options).to(W.device)


# --- models --------------------------------------------------------------------------------------

def random_llama(shape: dict[str, int], device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
                 seed: int = 0) -> nn.Module:
    """A LlamaForCausalLM of `shape` (LLAMA_7B's keys) with random weights, built on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape["hidden"] % shape["heads"]:
        raise ConfigError(f"--hidden {shape['hidden']} is not a multiple of --heads {shape['heads']}. "
                          "Fix: pick sizes that divide")
    cfg = LlamaConfig(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["heads"], vocab_size=shape["vocab"], max_position_embeddings=4096,
                      tie_word_embeddings=False, initializer_range=0.02)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in dtype: a 7B never exists in float32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = dtype
    return model.eval()


def decoder_linears(model: nn.Module) -> list[str]:
    """The linear layers of the decoder blocks (all but the LM head): 7 per Llama layer."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and re.search(r"(^|\.)layers\.\d+\.", name)]


def compress_decoder(model: nn.Module, spec: FormatSpec) -> dict[str, Any]:
    """Swap every decoder linear for its encoded layer; returns what the record says about it."""
    from llava_fa.io.modules import set_module

    names = decoder_linears(model)
    if spec.format != DENSE:
        for name in names:
            dense = model.get_submodule(name)
            bias = None if dense.bias is None else dense.bias.data
            set_module(model, name, encode_linear(dense.weight.data, bias, spec))
    return {"format": spec.format, "options": dict(spec.options), "linears": len(names), **model_bits(model)}


def model_bits(model: nn.Module) -> dict[str, Any]:
    """bits per weight of the compressed layers (binary's code-only bpw too); of the decoder linears'
    dtype when none is compressed (16 for bf16)."""
    compressed = [m for m in model.modules() if isinstance(m, CompressedLinear)]
    if not compressed:
        dense = [model.get_submodule(n).weight for n in decoder_linears(model)]
        return {"bits_per_weight": dense[0].element_size() * 8.0 if dense else None}
    weights = sum(m.in_features * m.out_features for m in compressed)
    out = {"bits_per_weight": sum(m.storage_bits() for m in compressed) / weights}
    binary = [m for m in compressed if isinstance(m, BinaryLinear)]
    if binary:
        codes = sum(m.bpw_conventions()["codes"] * m.in_features * m.out_features for m in binary)
        out["bits_per_weight_codes_only"] = codes / sum(m.in_features * m.out_features for m in binary)
    return out
