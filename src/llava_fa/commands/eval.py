"""`llava-fa eval`: size, perplexity, easy-VQA accuracy and fidelity of a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from llava_fa.commands.common import DTYPE_HELP, FORWARD_MODE_HELP, reported_as_user_errors
from llava_fa.errors import UserError


def _require_model_folder(path: Path, what: str) -> None:
    # Checked before the heavy imports and the model load, so a mistyped path fails at once.
    if not path.is_dir():
        raise UserError(f"{what} {path} does not exist or is not a folder. "
                        f"Fix: pass a folder written by save_pretrained (with config.json and *.safetensors)")
    if not (path / "config.json").is_file():
        raise UserError(f"{what} {path} has no config.json. Fix: pass a folder written by save_pretrained")


def eval_command(
    model_dir: Path = typer.Argument(..., help="Model folder (Hugging Face save_pretrained layout)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Reference model folder for KL / top-1 fidelity."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Only the first N easy-VQA test questions."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the full result to this JSON file."),
    vqa_mode: str = typer.Option("fast", "--vqa-mode", help="fast (rank the 13 answers in one forward), generate, or both."),
    text: Optional[str] = typer.Option(None, "--text", help="Perplexity text file, or 'datasets' [default: $LLAVA_FA_DATA/wikitext-2-raw/wiki.test.raw]."),
    seqlen: int = typer.Option(2048, "--seqlen", min=2, help="Perplexity window length in tokens."),
    ppl_windows: Optional[int] = typer.Option(None, "--ppl-windows", min=0, help="At most N perplexity windows (0 skips perplexity)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (or cuda:N)."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    vqa_root: Optional[Path] = typer.Option(None, "--vqa-root", help="easy-VQA data folder [default: the pinned asset]."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Questions per forward pass."),
    forward_mode: Optional[str] = typer.Option(None, "--forward-mode", help=FORWARD_MODE_HELP),
) -> None:
    """Evaluate a model: size/bpw, WikiText-2 perplexity, easy-VQA accuracy, fidelity to a reference."""
    _require_model_folder(model_dir, "model folder")
    if reference is not None:
        _require_model_folder(reference, "reference folder")
    from llava_fa.evaluation.runner import VQA_MODES, evaluate, print_result  # heavy imports: only when run

    if vqa_mode not in VQA_MODES:
        raise UserError(f"--vqa-mode {vqa_mode!r} is not one of {', '.join(VQA_MODES)}")
    with reported_as_user_errors():
        result = evaluate(model_dir, reference=reference, limit=limit, vqa_mode=vqa_mode, text_source=text,
                          seqlen=seqlen, ppl_windows=ppl_windows, device=device, dtype=dtype,
                          vqa_root=vqa_root, batch_size=batch_size, forward_mode=forward_mode)
    print_result(result)
    if json_path is not None:
        from llava_fa.io.files import write_json_atomic

        write_json_atomic(json_path, result)
        typer.echo(f"wrote {json_path}")
