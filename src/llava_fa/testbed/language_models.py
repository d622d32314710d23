"""The testbed's language models: one table row each, loaded from their pinned GGUF files.

Every fact that differs between the testbeds lives here; `llava-fa testbed build|fetch` and
`python -m llava_fa.testbed.train` take the row's name as `--language-model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from llava_fa import assets

if TYPE_CHECKING:  # the table itself stays cheap to import (the command line reads it)
    import torch

WEIGHTS_ROOT = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class LanguageModel:
    name: str  # the --language-model value, also the folder of its committed weights
    title: str
    gguf: Callable[[], Path]  # fetches the GGUF file (when needed) and returns its path
    download_mb: int  # what `llava-fa testbed fetch --language-model NAME` downloads for the GGUF
    testbed_dir: str  # the default build folder, under the cache
    model_type: str  # transformers' text model type
    dtype: str = "float32"  # default build dtype: every GGUF block type it uses dequantizes exactly in float32
    eos_token: str = "<|im_end|>"  # ChatML end of turn (the testbed prompt is ChatML for both)

    @property
    def weights_dir(self) -> Path:
        return WEIGHTS_ROOT / self.name


LANGUAGE_MODELS = {lm.name: lm for lm in (
    # Q4_1 blocks (d*q + m, fp16 d and m, 4-bit q) and one Q8_0 matrix: exact in float32.
    LanguageModel("smollm2-135m", "SmolLM2-135M-Instruct (GGUF Q4_1)", assets.smollm2_gguf, 93,
                  "testbed", "llama"),
    # Q4_K_M file: Q5_0, Q8_0, Q6_K blocks (an fp16 scale times small integers) and Q4_K blocks
    # (d*sc*q - dmin*m; all 52.3M values of this file checked exact in float32 against float64), F32.
    # Its output matrix is separate from the embeddings (tie_word_embeddings false).
    LanguageModel("qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M)", assets.qwen25_coder_gguf, 477,
                  "testbed-qwen2.5-0.5b", "qwen2"),
)}
DEFAULT_LANGUAGE_MODEL = "smollm2-135m"


def get_language_model(name: str) -> LanguageModel:
    if name not in LANGUAGE_MODELS:
        raise ValueError(f"unknown language model {name!r}. Fix: use one of {', '.join(LANGUAGE_MODELS)}.")
    return LANGUAGE_MODELS[name]


def load_gguf_lm(gguf_path: Path, dtype: torch.dtype | None = None):
    """Model and tokenizer from a GGUF file, dequantized by transformers into `dtype` (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} not found. Fix: run `llava-fa testbed fetch` to download it.")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype or torch.float32)
    # The weights are plain tensors now; a leftover "gguf" quantization_config would make
    # transformers treat a saved copy as still quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer


def load_language_model(lm: LanguageModel, dtype: torch.dtype | None = None):
    """Fetch the row's GGUF file and load it."""
    return load_gguf_lm(lm.gguf(), dtype)
