"""Where and in what precision models run, and keeping transformers' console output out of ours.

Every command and library entry point resolves `--device` and `--dtype` here, so "auto" means the
same thing everywhere. This module sits low in the package: it imports only `errors` and
third-party libraries.
"""

from __future__ import annotations

import os

import torch

from llava_fa.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): cuda when available, else cpu; otherwise cpu, cuda or cuda:N, which must exist here."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} requested but CUDA is not available; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype | str:
    """The `dtype` argument of `from_pretrained` for a model that will compute on `device`.

    "auto": float32 on CPU (half-precision matmuls are slow there, and float32 is what the reference
    numbers use); on CUDA the dtype the checkpoint stores, returned as the string "auto", which
    `from_pretrained` (and `io.checkpoint.load_model`) read that way. A torch.dtype or one of the names
    float32, bfloat16, float16 is taken as given; "tf32" is float32 with TF32 matmuls on CUDA (several
    times faster on an H100/H200, 10-bit mantissas in the products: for sweeps whose every row, the
    reference included, runs the same way). `device` may be "auto" too.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "tf32":  # float32 weights and activations, matmuls on TF32 tensor cores (CUDA; CPU: plain float32)
        torch.set_float32_matmul_precision("high")
        return torch.float32
    if dtype == "auto":
        return torch.float32 if resolve_device(device).type == "cpu" else "auto"
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be auto, float32, tf32, bfloat16 or float16, got {dtype!r}")
    return DTYPES[dtype]


def quiet_transformers() -> None:
    """Turn off transformers' own per-file progress bars: they would interleave with ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def environment() -> dict:
    """What a figure was measured with: library versions, threads, processor (records carry it, so
    that two runs that disagree can be traced to what differs between them)."""
    import platform

    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "machine": platform.machine(), "processor": platform.processor(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "high": TF32 (--dtype tf32)
            # the experiment switches that change which kernel runs (formats/fourier_runtime.SWITCHES)
            "switches": {k: v for k, v in os.environ.items() if k.startswith("LLAVA_FA_FOURIER_")}}
