"""WikiText-2 perplexity, GPTQ style: one long text, tokenized once, non-overlapping windows."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from llava_fa.evaluation._common import model_device, tokenizer_of
from llava_fa.evaluation.progress import tracked
from llava_fa.paths import data_dir

DATASETS_SOURCE = "datasets"


def default_text_path() -> Path:
    return data_dir() / "wikitext-2-raw" / "wiki.test.raw"


def load_text(source: str | Path | None = None) -> str:
    """The evaluation text: the shared WikiText-2 raw test file (None), a file, or "datasets".

    GPTQ evaluates `"\\n\\n".join(rows)` over the rows of the `wikitext-2-raw-v1` test split.
    The shared file holds those rows with the empty rows dropped, one row per line, written with
    CRLF line ends and no blank lines. So for a file we rebuild the rows (CRLF -> LF, each row
    keeps its own newline, as in the dataset) and join them with "\\n\\n" as GPTQ does; the only
    difference from GPTQ's text is the extra "\\n\\n" GPTQ gets from each empty row.
    """
    if source is not None and str(source) == DATASETS_SOURCE:
        return _load_from_datasets()
    path = Path(source) if source is not None else default_text_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluation text {path} not found. Fix: set LLAVA_FA_DATA to the shared data folder "
            f"(holding wikitext-2-raw/wiki.test.raw), pass --text FILE, or --text datasets to "
            f"download WikiText-2 with the Hugging Face `datasets` package."
        )
    raw = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    rows = [line + "\n" for line in raw.split("\n") if line.strip()]
    return "\n\n".join(rows)


def _load_from_datasets() -> str:
    try:
        import datasets  # lazy: an optional dependency that needs the network on first use
    except ImportError as e:
        raise FileNotFoundError(
            "--text datasets needs the `datasets` package (pip install datasets) and internet access; "
            "or pass --text FILE / set LLAVA_FA_DATA to use the shared WikiText-2 file"
        ) from e
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
    except Exception as e:  # offline, hub errors: many exception types, all mean "not available"
        raise FileNotFoundError(
            f"could not load wikitext/wikitext-2-raw-v1 with `datasets` ({type(e).__name__}: {e}). "
            f"Fix: check internet access, or pass --text FILE / set LLAVA_FA_DATA"
        ) from e
    return "\n\n".join(rows)  # exactly GPTQ's text


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text, 1-D. verbose=False: the length warning is expected here."""
    return tokenizer_of(tokenizer)(text, return_tensors="pt", verbose=False)["input_ids"][0]


def windows_of(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping full windows (the tail shorter than seqlen is dropped, as in GPTQ)."""
    n = ids.numel() // seqlen
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than seqlen={seqlen}; "
                         f"pass a smaller --seqlen or a longer --text")
    if max_windows is not None:
        n = min(n, max_windows)
    return [ids[i * seqlen:(i + 1) * seqlen] for i in range(n)]


@torch.no_grad()
def window_nll(model, window: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of one window (seqlen - 1 predictions), in float32."""
    ids = window.unsqueeze(0).to(model_device(model))
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, 1:], reduction="sum")


def perplexity(model, tokenizer, text: str, seqlen: int = 2048, max_windows: int | None = None,
               progress: bool = True) -> dict:
    """exp(mean NLL) over every predicted token of the non-overlapping windows.

    Works for causal LMs and for LLaVA models (a text-only forward). Equal windows make this the
    same number as GPTQ's exp(sum of window losses * seqlen / (windows * seqlen)).
    Returns {"ppl", "seqlen", "windows", "tokens" (in the text), "predicted_tokens"}.
    """
    model.eval()
    ids = tokenize_text(tokenizer, text)
    windows = windows_of(ids, seqlen, max_windows)
    total = torch.zeros((), dtype=torch.float64)
    for window in tracked(windows, len(windows), "perplexity", "windows", progress):
        total += window_nll(model, window).double().cpu()
    predicted = len(windows) * (seqlen - 1)
    return {"ppl": math.exp(total.item() / predicted), "seqlen": seqlen, "windows": len(windows),
            "tokens": int(ids.numel()), "predicted_tokens": predicted}
