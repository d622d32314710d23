"""`llava-fa bench-decode`: decode speed (TTFT, tokens/s per batch size) and weight memory, one JSON record per run.

Runs are either model folders (MODEL..., compressed by llava-fa or not, loaded as they are) or, with
--synthetic 7b, a random Llama-2-7B-shaped decoder compressed to each entry of --formats by data-free
encoders (evaluation/synthetic.py: speed and memory only, not quality). Every option is checked before
anything loads.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from llava_fa.commands.common import FORWARD_MODE_HELP, reported_as_user_errors
from llava_fa.errors import UserError

GIB = 1 << 30
SYNTHETIC_HELP = ("Benchmark a random decoder instead of MODEL folders: 7b (Llama-2-7B shapes: 32 layers, hidden "
                  "4096, MLP 11008, 32 heads, vocabulary 32000; --layers/--hidden/--intermediate/--heads/--vocab "
                  "change them), every decoder linear compressed to each --formats entry.")
FORMATS_HELP = ("With --synthetic: comma-separated FORMAT[:KEY=VALUE...] entries, one run each (default bf16). "
                "Formats and options (defaults): bf16 (uncompressed, in --dtype); affine (bits=4, group_size=128, "
                "sym=false; round-to-nearest); fourier (mag_bits=3, phase_bits=3, real_bits=3, group_size=64, "
                "transform=rfft|rfft2; spectrum codes, no low rank); binary (block_size=128, salient_frac=0.05; "
                "signs, order-2 residual on the highest-norm columns). E.g. bf16,affine:bits=3,binary or "
                "affine:bits=2:group_size=32,fourier:mag_bits=2:phase_bits=3")


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch {text!r} is not a list of positive integers. Fix: e.g. --batch 1,16")
    return sizes


def _shape(synthetic: str, overrides: dict[str, Optional[int]]) -> dict[str, int]:
    from llava_fa.evaluation.synthetic import SYNTHETIC_MODELS

    if synthetic not in SYNTHETIC_MODELS:
        raise UserError(f"--synthetic {synthetic!r} is not known. Fix: use {', '.join(SYNTHETIC_MODELS)}")
    shape = dict(SYNTHETIC_MODELS[synthetic])
    for key, value in overrides.items():
        if value is not None:
            if value < 1:
                raise UserError(f"--{key} must be a positive integer, got {value}. Fix: e.g. --{key} 2")
            shape[key] = value
    if shape["hidden"] % shape["heads"]:
        raise UserError(f"--hidden {shape['hidden']} is not a multiple of --heads {shape['heads']}. "
                        "Fix: pick sizes that divide")
    return shape


def check_inputs(models: list[Path], synthetic: Optional[str], formats: Optional[str], forward_mode: str,
                 json_dir: Optional[Path]) -> list:
    """Every option that can be checked before a model loads; returns the parsed --formats."""
    from llava_fa.formats import FORMATS
    from llava_fa.io.checkpoint import check_forward_mode, check_model_folder
    from llava_fa.io.files import check_writable
    from llava_fa.io.hf import QUANT_METHOD

    if bool(models) == bool(synthetic):
        raise UserError("give MODEL folders or --synthetic 7b (one of the two). Fix: e.g. "
                        "llava-fa bench-decode --synthetic 7b --formats bf16,affine:bits=4")
    if models and formats is not None:
        raise UserError("--formats applies to --synthetic only; MODEL folders run as they are stored. "
                        "Fix: drop --formats, or compress the folder first with llava-fa compress")
    known = sorted({m for cls in FORMATS.values() for m in cls.backends})
    if forward_mode not in known:
        raise UserError(f"unknown --forward-mode {forward_mode!r}. Fix: use one of {', '.join(known)}")
    specs = []
    with reported_as_user_errors():
        if synthetic:
            from llava_fa.evaluation.synthetic import DENSE, parse_formats

            specs = parse_formats(formats or "bf16")
            for spec in specs:
                if spec.format != DENSE and forward_mode not in FORMATS[spec.format].backends:
                    raise UserError(f"--forward-mode {forward_mode} is not a mode of format {spec.format} (its modes: "
                                    f"{', '.join(FORMATS[spec.format].backends)}). Fix: use auto, cached or dequant")
        for model in models:
            qc = check_model_folder(model).get("quantization_config")
            if isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD:
                check_forward_mode(model, forward_mode)
        if json_dir is not None:
            if json_dir.exists() and not json_dir.is_dir():
                raise UserError(f"--json-dir {json_dir} is a file. Fix: give a folder")
            check_writable(json_dir, "--json-dir")
    return specs


def _free(device) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def synthetic_runs(shape: dict[str, int], specs: list, device, dtype, seed: int):
    """(name, model, facts) for each format: a fresh random decoder compressed to it."""
    from llava_fa.evaluation.synthetic import LLAMA_7B, NOTE, compress_decoder, random_llama

    size = "7b" if shape == LLAMA_7B else "L{layers}-h{hidden}-i{intermediate}-a{heads}-v{vocab}".format(**shape)
    for spec in specs:
        model = random_llama(shape, device, dtype, seed)
        facts = compress_decoder(model, spec)
        facts.update(model={"synthetic": shape, "dtype": str(dtype).removeprefix("torch.")}, note=NOTE,
                     label=spec.text)
        yield f"synthetic-{size}_{spec.name}", model, facts


def folder_runs(models: list[Path], device, dtype):
    """(name, model, facts) for each folder, loaded by llava_fa.io.checkpoint.load_model."""
    from llava_fa.evaluation.synthetic import model_bits
    from llava_fa.formats import CompressedLinear
    from llava_fa.io.checkpoint import load_model

    for path in models:
        model = load_model(path, device, dtype)
        formats = sorted({m.format for m in model.modules() if isinstance(m, CompressedLinear)})
        facts = {"format": "+".join(formats) or "dense", "model": {"path": str(path), "dtype": str(dtype)},
                 "label": path.name, **model_bits(model)}
        yield path.name, model, facts


def records_table(records: list[dict[str, Any]], batches: tuple[int, ...]) -> Table:
    """format, bpw, weight GiB, TTFT, tokens/s per batch and the speed-up over the first dense run."""
    table = Table(title="llava-fa bench-decode")
    base = next((r for r in records if not r["compressed_layers"]), None)
    cols = ["run", "bpw", "weight GiB", "TTFT ms"] + [f"tok/s b{b}" for b in batches] + [f"x b{b}" for b in batches]
    for col in cols:
        table.add_column(col, justify="left" if col == "run" else "right", no_wrap=col == "run")
    for r in records:
        tps = [r["decode"][str(b)]["tokens_per_s"] for b in batches]
        graphs = ["" if r["decode"][str(b)]["cuda_graph"] else "*" for b in batches]
        ups = [f"{t / base['decode'][str(b)]['tokens_per_s']:.2f}" if base else "" for t, b in zip(tps, batches)]
        bpw = r.get("bits_per_weight")
        table.add_row(r["label"], "" if bpw is None else f"{bpw:.3f}", f"{r['memory']['weight_bytes'] / GIB:.2f}",
                      f"{r['prefill']['ttft_ms']:.1f}", *[f"{t:.1f}{g}" for t, g in zip(tps, graphs)], *ups)
    table.caption = "* eager (no CUDA graph); x: tokens/s over the first uncompressed run"
    return table


def bench_decode(
    models: Optional[list[Path]] = typer.Argument(None, metavar="MODEL", help="Model folders (compressed by "
                                                  "llava-fa or not), one run each; or use --synthetic."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help=SYNTHETIC_HELP),
    formats: Optional[str] = typer.Option(None, "--formats", help=FORMATS_HELP),
    layers: Optional[int] = typer.Option(None, "--layers", help="With --synthetic: decoder layers.",
                                         show_default="32"),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="With --synthetic: hidden size.", show_default="4096"),
    intermediate: Optional[int] = typer.Option(None, "--intermediate", help="With --synthetic: MLP size.",
                                               show_default="11008"),
    heads: Optional[int] = typer.Option(None, "--heads", help="With --synthetic: attention heads.", show_default="32"),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="With --synthetic: vocabulary.", show_default="32000"),
    batch: str = typer.Option("1,16", "--batch", help="Decode batch sizes, comma-separated."),
    prompt: int = typer.Option(512, "--prompt", help="Prompt tokens (random ids) before decoding; TTFT is at batch 1."),
    new_tokens: int = typer.Option(128, "--new-tokens", help="Greedy tokens timed per batch size."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed decode steps and prefills first."),
    repeats: int = typer.Option(3, "--repeats", help="Timed prefills (TTFT: their median)."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="Replay each decode step as a CUDA "
                                     "graph (eager where capture fails; the record says which ran)."),
    forward_mode: str = typer.Option("auto", "--forward-mode", help=FORWARD_MODE_HELP),
    compile_steps: bool = typer.Option(False, "--compile/--no-compile", help="Run each decode step through "
                                       "torch.compile (inductor: fuses the ops between the linears; compressed "
                                       "layers keep their own kernels). The first steps compile: slow once."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Activations and dense weights: bfloat16, float16, float32."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (or cuda:N)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights and prompts."),
    json_dir: Optional[Path] = typer.Option(None, "--json-dir", help="Write OUT/NAME.json per run (atomically)."),
) -> None:
    """Time to first token, greedy decode tokens/s and weight memory, uncompressed against compressed formats."""
    from llava_fa.evaluation.decode_speed import DecodeSpec
    from llava_fa.runtime import DTYPES, resolve_device

    models = list(models or [])
    with reported_as_user_errors():
        spec = DecodeSpec(parse_batches(batch), prompt, new_tokens, warmup, repeats, cuda_graphs, forward_mode, seed,
                          "inductor" if compile_steps else "")
        spec.check()
        dev = resolve_device(device)
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype!r} is not known. Fix: use {', '.join(DTYPES)}")
        shape = _shape(synthetic, {"layers": layers, "hidden": hidden, "intermediate": intermediate,
                                   "heads": heads, "vocab": vocab}) if synthetic else None
        specs = check_inputs(models, synthetic, formats, forward_mode, json_dir)
    with reported_as_user_errors():
        records = run_all(models, shape, specs, spec, dev, DTYPES[dtype], json_dir)
    Console().print(records_table(records, spec.batch_sizes))


def run_all(models: list[Path], shape: Optional[dict], specs: list, spec, device, dtype,
            json_dir: Optional[Path]) -> list[dict[str, Any]]:
    from llava_fa.evaluation.decode_speed import measure
    from llava_fa.io.files import write_json_atomic
    from llava_fa.kernels import cuda_build
    from llava_fa.runtime import environment

    err = Console(stderr=True)
    runs = synthetic_runs(shape, specs, device, dtype, spec.seed) if shape else folder_runs(models, device, dtype)
    records = []
    for name, model, facts in runs:
        record = {"name": name, **facts, **measure(model, spec, device),
                  # CUDA C++ kernels asked for: "built", or why not (then their Triton twins ran)
                  "environment": {**environment(), "cuda_kernels": cuda_build.status()}}
        if spec.compile_backend:  # compiled steps: told apart from eager runs in every table
            record["label"] = f"{record.get('label') or name} [compiled]"
        records.append(record)
        if json_dir is not None:
            write_json_atomic(json_dir / f"{name}.json", record)
        d = record["decode"]
        err.print(f"{name}: TTFT {record['prefill']['ttft_ms']:.1f} ms, "
                  + ", ".join(f"b{b} {v['tokens_per_s']:.1f} tok/s" for b, v in d.items()))
        del model
        _free(device)
    return records
