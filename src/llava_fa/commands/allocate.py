"""`llava-fa allocate MODEL --method M --budget B --candidates "bits=2;bits=3;bits=4" --out plan.yaml`:
choose per-layer options under a global bits-per-weight budget, written as a recipe for
`llava-fa compress MODEL --recipe plan.yaml --out DIR` (pipeline/allocation.py, pipeline/sensitivity.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llava_fa.commands.common import (CALIB_OPTION, DEVICE_OPTION, DTYPE_HELP, IGNORE_OPTION, NSAMPLES_OPTION,
                                      SEQLEN_OPTION, TARGET_OPTION, check_output_file, reported_as_user_errors)
from llava_fa.errors import UserError

STAGES = {"sensitivity": "sensitivity (noise on one layer at a time)",
          "candidates": "compressing each layer with every candidate"}


def allocate(
    model: str = typer.Argument(..., help="Hugging Face model directory, or `testbed`."),
    budget: float = typer.Option(..., "--budget", "-b", help="Bits per weight for all selected layers together, "
                                 "every stored bit counted (as the compress report does)."),
    candidates: str = typer.Option(..., "--candidates", "-c", metavar="K=V[,K=V];...",
                                   help="Option sets to choose from, e.g. \"bits=2;bits=3;bits=4\" or "
                                        "\"mag_bits=2,phase_bits=4;mag_bits=3,phase_bits=4\"."),
    out: Path = typer.Option(..., "--out", "-o", help="Plan to write: a recipe (.yaml, or .json) for "
                             "`llava-fa compress --recipe`."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Compression method.", show_default="rtn"),
    sensitivity: str = typer.Option("data-free", "--sensitivity", help="data-free (alpha = 1: least total relative "
                                    "error) or calibrated (alpha from the KL a noised layer causes)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML/JSON recipe to start from; flags override it."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="KEY=VALUE", show_default=False,
                                     help="Method option shared by every candidate (repeatable)."),
    target: list[str] = TARGET_OPTION,
    ignore: list[str] = IGNORE_OPTION,
    calib: Optional[str] = CALIB_OPTION,
    nsamples: Optional[int] = NSAMPLES_OPTION,
    seqlen: Optional[int] = SEQLEN_OPTION,
    seed: Optional[int] = typer.Option(None, "--seed", show_default="0", help="Calibration (and noise) seed."),
    noise: float = typer.Option(0.01, "--noise", help="calibrated: relative MSE t of the noise per layer."),
    sensitivity_samples: int = typer.Option(4, "--sensitivity-samples",
                                            help="calibrated: calibration sequences the KL is measured on."),
    device: str = DEVICE_OPTION,
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Choose each layer's options (from --candidates) so the model fits --budget bpw at the least
    estimated loss (HIGGS linearity: sum of sensitivity x relative weight error); write a recipe."""
    from llava_fa.commands.compress import build_recipe
    from llava_fa.pipeline.allocation import parse_candidates
    from llava_fa.pipeline.sensitivity import SensitivityConfig
    from llava_fa.runtime import quiet_transformers, resolve_device, resolve_dtype

    rec = build_recipe(recipe, method, {}, option, target, ignore, None, None, calib, nsamples, seqlen, seed)
    with reported_as_user_errors():
        choices = parse_candidates(candidates)
        sens = SensitivityConfig(sensitivity, noise, sensitivity_samples, rec.calibration.seed)
        sens.check()
        dev = resolve_device(device)
        resolve_dtype(dtype, dev)
    if out.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UserError(f"--out {out}: the plan is a recipe file. Fix: name it .yaml, .yml or .json")
    check_output_file(out, "--out")
    quiet_transformers()
    err = Console(stderr=True, quiet=quiet, soft_wrap=True)
    err.print(f"allocating {budget} bpw over {rec.method} candidates {', '.join(c.label for c in choices)} "
              f"({sens.kind} sensitivity) on {dev}")
    plan = _run(err, model, rec, choices, budget, sens, str(dev), dtype)
    write_plan(out, plan, model)
    summarize(err, plan, out, model)


def _run(err: Console, model: str, rec, choices, budget: float, sens, device: str, dtype: str) -> dict:
    from llava_fa.pipeline.sensitivity import allocate_checkpoint

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("layers"),
                        TimeElapsedColumn(), console=err, disable=err.quiet)
    tasks: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(STAGES.get(stage, stage), total=total)
        progress.update(tasks[stage], completed=done)

    with progress, reported_as_user_errors():
        return allocate_checkpoint(model, rec, choices, budget, sens, device=device, dtype=dtype, on_info=err.print,
                                   on_progress=on_progress)


def write_plan(out: Path, plan: dict, model: str) -> None:
    """The recipe, YAML (with a header saying how to apply it) or JSON by the suffix; atomically."""
    from llava_fa.io.files import atomic_write_bytes

    if out.suffix.lower() == ".json":
        text = json.dumps(plan, indent=1) + "\n"
    else:
        import yaml

        text = (f"# llava-fa allocate: per-layer options under {plan['allocation']['budget_bpw']} bpw.\n"
                f"# Apply: llava-fa compress {model} --recipe {out.name} --out DIR\n"
                + yaml.safe_dump(plan, sort_keys=False, width=120))
    atomic_write_bytes(out, text.encode())


def summarize(err: Console, plan: dict, out: Path, model: str) -> None:
    a = plan["allocation"]
    per = ", ".join(f"{label}: {n}" for label, n in a["layers_per_candidate"].items())
    err.print(f"plan: {a['bpw']:.4f} bpw (budget {a['budget_bpw']}), estimated loss {a['estimated_loss']:.6g}; "
              f"layers per candidate: {per}")
    for label, flat in a["uniform"].items():
        fits = "fits" if flat["bpw"] <= a["budget_bpw"] else "over budget"
        err.print(f"  uniform {label}: {flat['bpw']:.4f} bpw ({fits}), estimated loss {flat['loss']:.6g}")
    err.print(f"wrote {out}; apply it with: llava-fa compress {model} --recipe {out} --out DIR")
