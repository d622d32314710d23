"""`llava-fa eval`: size, perplexity, easy-VQA accuracy and fidelity of a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from llava_fa.commands.common import (DTYPE_HELP, FORWARD_MODE_HELP, check_model_inputs, check_output_file,
                                      check_text_source, reported_as_user_errors)
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
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Only the first N easy-VQA test questions (with "
                                        "--tasks: the first N documents of each task, default all).",
                                        show_default="a few hundred on CPU, all on a GPU or with --full"),
    full: bool = typer.Option(False, "--full", help="The whole easy-VQA test split and all of WikiText-2, also "
                                                    "on CPU (hours there)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the full result (with --tasks: "
                                             "task -> metric -> value) to this JSON file."),
    vqa_mode: str = typer.Option("fast", "--vqa-mode", help="fast (rank the 13 answers in one forward), generate, or both."),
    text: Optional[str] = typer.Option(None, "--text", help="Perplexity text file, or 'datasets'.",
                                       show_default="$LLAVA_FA_DATA/wikitext-2-raw/wiki.test.raw"),
    seqlen: int = typer.Option(2048, "--seqlen", min=2, help="Perplexity window length in tokens."),
    ppl_windows: Optional[int] = typer.Option(None, "--ppl-windows", min=0,
                                              show_default="a few on CPU, all on a GPU or with --full",
                                              help="At most N perplexity windows (0 skips perplexity)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (or cuda:N)."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    vqa_root: Optional[Path] = typer.Option(None, "--vqa-root", help="easy-VQA data folder.",
                                            show_default="the pinned asset"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Questions (with --tasks: lm-eval requests) "
                                                                   "per forward pass."),
    forward_mode: Optional[str] = typer.Option(None, "--forward-mode", help=FORWARD_MODE_HELP),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-evaluation-harness tasks, comma-separated "
                                        "(e.g. wikitext,arc_easy; with --harness lmms-eval image-text tasks, e.g. "
                                        "mmmu_val,textvqa_val). With --tasks ONLY these tasks run (no size, "
                                        "perplexity, VQA or fidelity); --limit is then documents per task."),
    tasks_include: Optional[Path] = typer.Option(None, "--tasks-include", help="Folder of local task YAMLs (the "
                                                 "harness's include_path); when every task is from it, the run "
                                                 "is offline."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="Few-shot examples per "
                                              "--tasks prompt.", show_default="each task's own"),
    harness: Optional[str] = typer.Option(None, "--harness", help="Which harness runs --tasks: lm-eval "
                                          "(lm-evaluation-harness; text tasks, the model as a language model) or "
                                          "lmms-eval (image-text tasks such as mmmu_val, textvqa_val, mme: images "
                                          "and text through the model's processor). Task names both know (mmmu_val, "
                                          "chartqa) run where this says.", show_default="lm-eval"),
) -> None:
    """Evaluate a model: size/bpw, WikiText-2 perplexity, easy-VQA accuracy, fidelity to a reference; or, with
    --tasks, lm-evaluation-harness tasks (--harness lmms-eval: lmms-eval's image-text tasks)."""
    if tasks is not None:
        return harness_command(model_dir, tasks, tasks_include, limit, num_fewshot, reference, json_path, device,
                               dtype, batch_size, forward_mode, harness)
    if tasks_include is not None or num_fewshot is not None or harness is not None:
        raise UserError("--tasks-include, --num-fewshot and --harness go with --tasks. "
                        "Fix: add --tasks NAME[,NAME...]")
    check_eval_inputs(model_dir, reference, vqa_mode, forward_mode, device, dtype, json_path, text, ppl_windows, vqa_root)
    builtin_measures(model_dir, reference, full, limit, ppl_windows, vqa_mode, text, seqlen, device, dtype, vqa_root,
                     batch_size, forward_mode, json_path)


def builtin_measures(model_dir: Path, reference: Optional[Path], full: bool, limit: Optional[int],
                     ppl_windows: Optional[int], vqa_mode: str, text: Optional[str], seqlen: int, device: str,
                     dtype: str, vqa_root: Optional[Path], batch_size: int, forward_mode: Optional[str],
                     json_path: Optional[Path]) -> None:
    """Size, perplexity, easy-VQA and fidelity (inputs already checked), sized to the device."""
    from rich.console import Console

    from llava_fa.evaluation.runner import evaluate, print_result  # heavy imports: only when run
    from llava_fa.evaluation.sizing import eval_sizes
    from llava_fa.runtime import resolve_device

    err = Console(stderr=True, soft_wrap=True)
    dev = resolve_device(device)
    sizes = eval_sizes(dev, full, limit, ppl_windows)
    if sizes.bounded:
        err.print(f"on CPU the default is a bounded run ({sizes.ppl_windows} perplexity windows, {sizes.limit} "
                  f"easy-VQA questions); --full for the whole splits, --limit / --ppl-windows for other sizes")
    with reported_as_user_errors():
        result = evaluate(model_dir, reference=reference, limit=sizes.limit, vqa_mode=vqa_mode, text_source=text,
                          seqlen=seqlen, ppl_windows=sizes.ppl_windows, device=dev, dtype=dtype,
                          vqa_root=vqa_root, batch_size=batch_size, fidelity_prompts=sizes.fidelity_prompts,
                          forward_mode=forward_mode, announce=err.print)
    print_result(result)
    write_result(json_path, result)


def write_result(json_path: Optional[Path], result: dict) -> None:
    """The result as JSON where --json asks for it (atomically: complete or absent)."""
    if json_path is not None:
        from llava_fa.io.files import write_json_atomic

        write_json_atomic(json_path, result)
        typer.echo(f"wrote {json_path}")


def check_eval_inputs(model_dir: Path, reference: Optional[Path], vqa_mode: str, forward_mode: Optional[str],
                      device: str, dtype: str, json_path: Optional[Path], text: Optional[str],
                      ppl_windows: Optional[int], vqa_root: Optional[Path]) -> None:
    """Every flag of `llava-fa eval` that can be wrong, checked before a model loads."""
    _require_model_folder(model_dir, "model folder")
    if reference is not None:
        _require_model_folder(reference, "reference folder")
    from llava_fa.evaluation.runner import VQA_MODES
    from llava_fa.runtime import resolve_device, resolve_dtype

    if vqa_mode not in VQA_MODES:
        raise UserError(f"--vqa-mode {vqa_mode!r} is not one of {', '.join(VQA_MODES)}. "
                        f"Fix: pass --vqa-mode {' or '.join(VQA_MODES)}")
    if vqa_root is not None and not Path(vqa_root).is_dir():
        raise UserError(f"--vqa-root {vqa_root} is not a folder. Fix: pass the easy-VQA data folder, or leave "
                        f"--vqa-root out to use the pinned asset")
    check_model_inputs(model_dir, forward_mode)
    if reference is not None:
        check_model_inputs(reference)
    with reported_as_user_errors():
        resolve_dtype(dtype, resolve_device(device))
    check_output_file(json_path, "--json", (model_dir, reference))
    check_text_source(text, needed=ppl_windows != 0)


HARNESSES = {"lm-eval": "lm-eval", "lm_eval": "lm-eval", "lmms-eval": "lmms-eval", "lmms_eval": "lmms-eval",
             "lmms": "lmms-eval"}


def harness_name(harness: Optional[str]) -> str:
    """--harness as 'lm-eval' or 'lmms-eval' (default lm-eval; lm_eval, lmms_eval and lmms are accepted)."""
    if harness is None:
        return "lm-eval"
    name = HARNESSES.get(harness.strip().lower())
    if name is None:
        raise UserError(f"--harness {harness!r} is not lm-eval or lmms-eval. Fix: pass --harness lm-eval (text "
                        f"tasks) or --harness lmms-eval (image-text tasks)")
    return name


def harness_command(model_dir: Path, tasks: str, include: Optional[Path], limit: Optional[int],
                    num_fewshot: Optional[int], reference: Optional[Path], json_path: Optional[Path], device: str,
                    dtype: str, batch_size: int, forward_mode: Optional[str], harness: Optional[str] = None) -> None:
    """`llava-fa eval DIR --tasks ...`: lm-evaluation-harness (or lmms-eval) tasks on the model, loaded by llava-fa."""
    which = harness_name(harness)
    manager, names = check_harness_inputs(model_dir, tasks, include, reference, forward_mode, device, dtype,
                                          json_path, which)
    from rich.console import Console

    from llava_fa.evaluation.harness import render_table
    from llava_fa.runtime import resolve_device, resolve_dtype

    if which == "lmms-eval":
        from llava_fa.evaluation.lmms import evaluate_tasks
    else:
        from llava_fa.evaluation.harness import evaluate_tasks
    dev = resolve_device(device)
    with reported_as_user_errors():
        result = evaluate_tasks(model_dir, names, include, limit=limit, num_fewshot=num_fewshot, device=dev,
                                dtype=resolve_dtype(dtype, dev), batch_size=batch_size, forward_mode=forward_mode,
                                manager=manager)
    Console().print(render_table(result))
    write_result(json_path, result)


def check_harness_inputs(model_dir: Path, tasks: str, include: Optional[Path], reference: Optional[Path],
                         forward_mode: Optional[str], device: str, dtype: str, json_path: Optional[Path],
                         harness: str = "lm-eval"):
    """Every flag of `llava-fa eval --tasks` checked, and the task names looked up, before a model loads.
    Returns (the harness's TaskManager, task names)."""
    _require_model_folder(model_dir, "model folder")
    if reference is not None:
        raise UserError("--reference does not go with --tasks (fidelity is not measured then). Fix: run "
                        "`llava-fa eval` twice, once with --tasks and once with --reference")
    if include is not None and not Path(include).is_dir():
        raise UserError(f"--tasks-include {include} is not a folder. Fix: pass the folder that holds the task "
                        f"YAML files")
    from llava_fa.evaluation.harness import parse_tasks, require_lm_eval, task_manager
    from llava_fa.runtime import resolve_device, resolve_dtype

    check_model_inputs(model_dir, forward_mode)
    with reported_as_user_errors():
        resolve_dtype(dtype, resolve_device(device))
    check_output_file(json_path, "--json", (model_dir,))
    with reported_as_user_errors():
        names = parse_tasks(tasks)
        if harness == "lmms-eval":
            from llava_fa.evaluation import lmms

            lmms.require_lmms_eval()
            return lmms.task_manager(names, include), names
        require_lm_eval()
        return task_manager(names, include), names
