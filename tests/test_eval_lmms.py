"""`llava-fa eval --harness lmms-eval --tasks`: lmms-eval image-text tasks on a tiny compressed LLaVA, offline.

The tasks are tests/fixtures/lmms_tasks (8 easy-VQA style questions on 32x32 PNGs, answered by
generation and as multiple choice). Their scores are checked against llava-fa's own easy-VQA generation
(`vqa.predict_generate`) and plain forwards of the same loaded model, so a wrong prompt, image, batch or
sign in the lmms-eval model class shows up as a different answer."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import compress_fixtures as F

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (make install: pip install --no-deps lmms-eval)")

TASKS = Path(__file__).parent / "fixtures" / "lmms_tasks"
GEN, MC = "llava_fa_tiny_vqa", "llava_fa_tiny_vqa_mc"


def letters_only(model) -> None:
    """Zero the output rows of every token but a-z: greedy answers are then lowercase words (random ones),
    which easy-VQA's first-word normalization keeps whole, so whole answers are compared, not ''."""
    from llava_fa.evaluation._common import tokenizer_of

    tok = tokenizer_of(F.tokenizer())
    keep = torch.tensor([tok.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"])
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        mask = torch.zeros(head.shape[0], dtype=torch.bool)
        mask[keep] = True
        head[~mask] = 0
        head[mask] *= 4  # clear margins between the letters


@pytest.fixture(scope="module")
def compressed_dir(tmp_path_factory) -> Path:
    """A tiny LLaVA whose decoder linears are 4-bit RTN compressed layers, saved with its processor."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    import llava_fa  # noqa: F401  (registers the compressed layers with transformers)
    from llava_fa.io.checkpoint import quantization_config, save_compressed
    from llava_fa.methods import build_config, get_method
    from llava_fa.pipeline import compress_model, default_patterns, find_parts, select

    root = tmp_path_factory.mktemp("lmms")
    F.save_llava_dir(root / "dense")
    model = LlavaForConditionalGeneration.from_pretrained(root / "dense").eval()
    letters_only(model)
    names = select(model, *default_patterns(find_parts(model)))
    method = get_method("rtn")(build_config("rtn", {"bits": 4, "group_size": 32}))
    compress_model(model, method, names, [])
    qc = quantization_config(model, "rtn", method.config.to_dict(), ["Linear"], [])
    return save_compressed(model, root / "q", qc, AutoProcessor.from_pretrained(root / "dense"))


def docs() -> list[dict]:
    return [json.loads(line) for line in (TASKS / "tiny_vqa.jsonl").read_text().splitlines()]


def own_answers(model, processor, batch_size: int) -> list[str]:
    """llava-fa's easy-VQA generate mode (prompt, left-padded image batches, 4 greedy tokens, first word)."""
    from llava_fa.evaluation.vqa import predict_generate
    from llava_fa.testbed.easyvqa import VQAExample

    examples = [VQAExample(d["question"], d["answer"], i, TASKS / d["image"]) for i, d in enumerate(docs())]
    return predict_generate(model, processor, examples, batch_size=batch_size, max_new_tokens=4, progress=False)


@torch.no_grad()
def own_choices(model, processor) -> list[int]:
    """For each question, the choice with the highest log-probability after the image + prompt."""
    from llava_fa.calibration.data import conversation_text
    from llava_fa.testbed.easyvqa import load_image, user_text

    picks = []
    for d in docs():
        prompt = conversation_text(processor, user_text(d["question"]))
        enc = processor(images=[[load_image(TASKS / d["image"])]], text=[prompt], return_tensors="pt")
        scores = []
        for choice in d["choices"]:
            cont = processor.tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.cat([enc["input_ids"], torch.tensor([cont])], 1)
            logits = model(input_ids=ids, pixel_values=enc["pixel_values"], use_cache=False).logits[0]
            logp = torch.log_softmax(logits[-len(cont) - 1:-1].double(), -1)
            scores.append(logp.gather(1, torch.tensor(cont)[:, None]).sum().item())
        picks.append(max(range(len(scores)), key=scores.__getitem__))
    return picks


def test_lmms_tasks_on_compressed_model_match_own_generation(run, compressed_dir, tmp_path, one_thread,
                                                             monkeypatch):
    from llava_fa.formats import AffineLinear
    from llava_fa.io.checkpoint import load_model_and_processor

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "lmms.json"
    code, stdout, stderr = run("eval", compressed_dir, "--harness", "lmms-eval", "--tasks", f"{GEN},{MC}",
                               "--tasks-include", TASKS, "--json", out, "--device", "cpu", "--batch-size", "4")
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["harness"] == "lmms-eval" and result["offline"] is True and result["model_type"] == "llava"
    assert result["tasks"] == [GEN, MC] and result["n_samples"] == {GEN: 8, MC: 8}
    assert GEN in stdout and "exact_match" in stdout and "lmms-eval" in stdout and f"wrote {out}" in stdout

    model, processor = load_model_and_processor(compressed_dir, "cpu", torch.float32)
    assert any(isinstance(m, AffineLinear) for m in model.modules())  # what ran was the compressed model
    want = own_answers(model, processor, batch_size=4)
    got = [row["response"] for row in result["samples"][GEN]]
    assert all(w.isalpha() and len(w) >= 2 for w in want), want  # real words were compared, not ''
    assert got == want
    answers = [d["answer"] for d in docs()]
    assert result["results"][GEN]["exact_match"] == pytest.approx(sum(map(str.__eq__, want, answers)) / 8)
    labels = [d["label"] for d in docs()]
    picks = own_choices(model, processor)
    assert result["results"][MC]["acc"] == pytest.approx(sum(map(int.__eq__, picks, labels)) / 8)
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ  # offline undone

    # batches of one give the same answers; --limit bounds the documents
    code, _, stderr = run("eval", compressed_dir, "--harness", "lmms", "--tasks", GEN, "--tasks-include", TASKS,
                          "--limit", "3", "--batch-size", "1", "--json", out)
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["n_samples"] == {GEN: 3}
    assert [row["response"] for row in result["samples"][GEN]] == own_answers(model, processor, 1)[:3]


def test_lmms_missing_data_is_a_clean_error(run, compressed_dir, tmp_path):
    include = tmp_path / "tasks"
    include.mkdir()
    text = (TASKS / "tiny_vqa.yaml").read_text().replace(GEN, "llava_fa_gone").replace("tiny_vqa.jsonl", "gone.jsonl")
    (include / "gone.yaml").write_text(text)
    (include / "utils.py").write_text((TASKS / "utils.py").read_text())
    code, _, stderr = run("eval", compressed_dir, "--harness", "lmms-eval", "--tasks", "llava_fa_gone",
                          "--tasks-include", include)
    assert code == 2 and "Traceback" not in stderr
    assert "data of lmms-eval task 'llava_fa_gone' is not available" in stderr and "offline" in stderr
    assert "--tasks-include" in stderr


def test_lmms_missing_package_and_bad_flags_are_clean_errors(run, compressed_dir, monkeypatch):
    code, _, stderr = run("eval", compressed_dir, "--harness", "lmms")
    assert code == 2 and "go with --tasks" in stderr
    code, _, stderr = run("eval", compressed_dir, "--harness", "vlmeval", "--tasks", GEN)
    assert code == 2 and "--harness 'vlmeval' is not lm-eval or lmms-eval" in stderr
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # as if not installed: importing it fails
    code, _, stderr = run("eval", compressed_dir, "--harness", "lmms-eval", "--tasks", "mmmu_val")
    assert code == 2 and "Traceback" not in stderr
    assert "needs lmms-eval, which is not installed" in stderr and 'pip install --no-deps "lmms-eval' in stderr


def test_lmms_unknown_task_lists_close_names(run, compressed_dir):
    # the fixture folder does not have it, so lmms-eval's whole catalogue is searched (~25 s to index)
    code, _, stderr = run("eval", compressed_dir, "--harness", "lmms-eval", "--tasks", "textvqa_vall",
                          "--tasks-include", TASKS)
    assert code == 2 and "Traceback" not in stderr
    assert "unknown lmms-eval task 'textvqa_vall'" in stderr and "textvqa_val" in stderr
