"""`llava-fa export DIR --out OUT`: a checkpoint of `affine` codes in compressed-tensors' format (vLLM)."""

from __future__ import annotations

from pathlib import Path

import typer

from llava_fa.commands.common import reported_as_user_errors
from llava_fa.errors import UserError


def export(
    model_dir: Path = typer.Argument(..., help="A folder written by `llava-fa compress` with rtn, gptq or hqq."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the compressed-tensors checkpoint to."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Export affine codes (rtn, gptq, hqq) to compressed-tensors pack-quantized, as vLLM and llm-compressor load."""
    try:
        from llava_fa.io.compressed_tensors import export_compressed_tensors
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise UserError("exporting needs the compressed-tensors package. Fix: pip install 'llava-fa[export]' "
                        "(or pip install compressed-tensors)") from None
    from llava_fa.io.files import check_apart, check_writable

    with reported_as_user_errors():
        check_apart(out, model_dir)  # `export DIR --out DIR --overwrite` must not replace the input
        check_writable(out)
        qconfig = export_compressed_tensors(model_dir, out, overwrite=overwrite)
    groups = ", ".join(f"{g['weights']['num_bits']}-bit groups of {g['weights']['group_size']}"
                       for g in qconfig["config_groups"].values())
    typer.echo(f"wrote {out}: compressed-tensors {qconfig['format']} ({groups})")
