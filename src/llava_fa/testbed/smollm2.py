"""SmolLM2-135M-Instruct from its GGUF file (Q4_1), dequantized by transformers to float32."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def load_smollm2(gguf_path: Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a GGUF file. Q4_1 dequantizes exactly in float32 (d*q + m, fp16 d, m)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} not found. Fix: run `llava-fa testbed fetch` to download it.")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    # The weights are plain tensors now; a leftover "gguf" quantization_config would make
    # transformers treat a saved copy as still quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer
