"""`llava-fa eval` sized to the device: a bounded CPU run by default, announced with its size and time."""

from __future__ import annotations

import json

import pytest
import torch

from llava_fa.evaluation.sizing import CPU_PPL_WINDOWS, CPU_VQA_QUESTIONS, EvalPlan, eval_sizes
from test_evaluation import PPL_TEXT, invoke_eval, make_llava, write_vqa, ANSWERS, QUESTIONS


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_cpu_default_is_bounded_and_explicit_sizes_win():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    sizes = eval_sizes(cpu, full=False)
    assert (sizes.limit, sizes.ppl_windows, sizes.bounded) == (CPU_VQA_QUESTIONS, CPU_PPL_WINDOWS, True)
    assert eval_sizes(cpu, full=True).limit is None and eval_sizes(cpu, full=True).ppl_windows is None
    assert eval_sizes(gpu, full=False).ppl_windows is None and not eval_sizes(gpu, full=False).bounded
    explicit = eval_sizes(cpu, full=False, limit=7, ppl_windows=0)
    assert (explicit.limit, explicit.ppl_windows, explicit.bounded) == (7, 0, False)


def test_plan_describes_sizes_and_time():
    plan = EvalPlan(windows=4, windows_total=148, seqlen=2048, questions=300, questions_total=9673,
                    vqa_modes=("fast",), fidelity_prompts=64, seconds_per_token=1e-3, with_reference=True)
    text = plan.describe(torch.device("cpu"))
    assert "4 of 148 WikiText-2 windows of 2048 tokens" in text and "300 of 9,673 easy-VQA questions" in text
    assert "64 fidelity prompts" in text and "about 40 s" in text
    assert plan.estimated_seconds() == pytest.approx((4 * 2048 + 0.65 * 300 * 100 + 2 * 64 * 100) * 1e-3)


def test_cli_eval_announces_a_bounded_cpu_run(llava_dir, tmp_path):
    root = write_vqa(tmp_path / "vqa", ANSWERS[:len(QUESTIONS)])
    text = tmp_path / "text.raw"
    text.write_bytes(PPL_TEXT.encode())
    out = tmp_path / "result.json"
    res = invoke_eval(str(llava_dir), "--text", str(text), "--seqlen", "16", "--device", "cpu",
                      "--vqa-root", str(root), "--json", str(out))
    assert res.exit_code == 0, res.output
    assert "bounded run" in res.output and "--full" in res.output
    assert f"of {len(QUESTIONS)} easy-VQA questions" in res.output and "about" in res.output
    result = json.loads(out.read_text())
    assert result["perplexity"]["windows"] == min(CPU_PPL_WINDOWS, result["perplexity"]["tokens"] // 16)
    assert result["vqa"]["fast"]["n"] == len(QUESTIONS)


def test_cli_eval_full_runs_every_window(llava_dir, tmp_path):
    root = write_vqa(tmp_path / "vqa", ANSWERS[:len(QUESTIONS)])
    text = tmp_path / "text.raw"
    text.write_bytes(PPL_TEXT.encode())
    out = tmp_path / "result.json"
    res = invoke_eval(str(llava_dir), "--text", str(text), "--seqlen", "8", "--device", "cpu", "--full",
                      "--vqa-root", str(root), "--json", str(out))
    assert res.exit_code == 0, res.output
    assert "bounded run" not in res.output
    ppl = json.loads(out.read_text())["perplexity"]
    assert ppl["windows"] == ppl["tokens"] // 8 > CPU_PPL_WINDOWS
