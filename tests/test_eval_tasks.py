"""`llava-fa eval --tasks`: lm-evaluation-harness tasks on a tiny compressed LLaVA, offline, on local task data.

The task data are tests/fixtures/harness_tasks/*.jsonl (10 multiple-choice questions and 5 lines of the
WikiText-2 raw test split); the task YAMLs are written here with absolute paths, because lm-eval hands
`data_files` to `datasets` as they are, relative to the working directory."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import compress_fixtures as F

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'llava-fa[test]')")

DATA = Path(__file__).parent / "fixtures" / "harness_tasks"
MC, PPL = "llava_fa_tiny_mc", "llava_fa_tiny_wikitext"
MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
PPL_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


def write_tasks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_mc.yaml").write_text(MC_YAML.format(name=MC, data=(DATA / "tiny_mc.jsonl").resolve()))
    (folder / "tiny_wikitext.yaml").write_text(PPL_YAML.format(name=PPL, data=(DATA / "tiny_wikitext.jsonl").resolve()))
    return folder


@pytest.fixture(scope="module")
def compressed_dir(tmp_path_factory) -> Path:
    """A tiny LLaVA whose decoder linears are 4-bit RTN compressed layers, saved with its processor."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    import llava_fa  # noqa: F401  (registers the compressed layers with transformers)
    from llava_fa.io.checkpoint import quantization_config, save_compressed
    from llava_fa.methods import build_config, get_method
    from llava_fa.pipeline import compress_model, default_patterns, find_parts, select

    root = tmp_path_factory.mktemp("harness")
    F.save_llava_dir(root / "dense")
    model = LlavaForConditionalGeneration.from_pretrained(root / "dense").eval()
    names = select(model, *default_patterns(find_parts(model)))
    method = get_method("rtn")(build_config("rtn", {"bits": 4, "group_size": 32}))
    compress_model(model, method, names, [])
    qc = quantization_config(model, "rtn", method.config.to_dict(), ["Linear"], [])
    return save_compressed(model, root / "q", qc, AutoProcessor.from_pretrained(root / "dense"))


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, one plain forward of the whole sequence."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(1, x[0, 1:, None])[:, 0]


def expected_metrics(model_dir: Path) -> dict:
    """acc and the rolling-loglikelihood perplexities of the two tasks, computed here with plain forwards
    of the model loaded by llava-fa (its compressed layers), as lm-eval defines them."""
    from llava_fa.io.checkpoint import load_model_and_processor

    model, processor = load_model_and_processor(model_dir, "cpu", torch.float32)
    tok = processor.tokenizer
    correct = []
    for doc in map(json.loads, (DATA / "tiny_mc.jsonl").read_text().splitlines()):
        context = tok(f"Question: {doc['question']}\nAnswer:")["input_ids"]
        scores = [_logprobs(model, context + tok(" " + c)["input_ids"])[len(context) - 1:].sum().item()
                  for c in doc["choices"]]
        correct.append(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    ll = words = nbytes = 0
    for page in (json.loads(line)["page"] for line in (DATA / "tiny_wikitext.jsonl").read_text().splitlines()):
        # one window (each page is shorter than the context): every token predicted, the first from EOS
        ll += _logprobs(model, [tok.eos_token_id] + tok(page)["input_ids"]).sum().item()
        words += len(re.split(r"\s+", page))
        nbytes += len(page.encode("utf-8"))
    return {"acc": sum(correct) / len(correct), "word_perplexity": math.exp(-ll / words),
            "bits_per_byte": -ll / nbytes / math.log(2)}


def test_tasks_on_compressed_model_match_own_computation(run, compressed_dir, tmp_path, one_thread, monkeypatch):
    from llava_fa.formats import AffineLinear

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    include, out = write_tasks(tmp_path / "tasks"), tmp_path / "harness.json"
    code, stdout, stderr = run("eval", compressed_dir, "--tasks", f"{MC},{PPL}", "--tasks-include", include,
                               "--json", out, "--device", "cpu", "--batch-size", "4")
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["tasks"] == [MC, PPL] and result["offline"] is True and result["model_type"] == "llava"
    assert result["n_samples"] == {MC: 10, PPL: 5}
    got = result["results"]
    assert set(got[MC]) == {"acc", "acc_stderr"} and set(got[PPL]) >= {"word_perplexity", "bits_per_byte"}
    want = expected_metrics(compressed_dir)
    assert got[MC]["acc"] == pytest.approx(want["acc"], abs=1e-9)
    assert got[PPL]["word_perplexity"] == pytest.approx(want["word_perplexity"], rel=1e-4)
    assert got[PPL]["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-5)
    assert MC in stdout and "word_perplexity" in stdout and f"wrote {out}" in stdout
    # the offline switch is undone after the run
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    # what ran was the compressed model: its layers are llava-fa's
    from llava_fa.io.checkpoint import load_model
    assert any(isinstance(m, AffineLinear) for m in load_model(compressed_dir).modules())

    code, _, stderr = run("eval", compressed_dir, "--tasks", MC, "--tasks-include", include, "--limit", "3",
                          "--num-fewshot", "1", "--json", out)
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["n_samples"] == {MC: 3} and result["num_fewshot"] == 1 and 0 <= result["results"][MC]["acc"] <= 1


def test_local_task_with_missing_data_is_a_clean_error(run, compressed_dir, tmp_path):
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "gone.yaml").write_text(MC_YAML.format(name="llava_fa_gone", data=tmp_path / "missing.jsonl"))
    code, _, stderr = run("eval", compressed_dir, "--tasks", "llava_fa_gone", "--tasks-include", include)
    assert code == 2 and "Traceback" not in stderr
    assert "data of lm-eval task 'llava_fa_gone' is not available" in stderr and "offline" in stderr
    assert "--tasks-include" in stderr


def test_harness_missing_and_bad_flags_are_clean_errors(run, compressed_dir, tmp_path, monkeypatch):
    code, _, stderr = run("eval", compressed_dir, "--tasks", MC, "--tasks-include", tmp_path / "nowhere")
    assert code == 2 and "--tasks-include" in stderr and "is not a folder" in stderr
    code, _, stderr = run("eval", compressed_dir, "--tasks", " , ")
    assert code == 2 and "names no task" in stderr
    code, _, stderr = run("eval", compressed_dir, "--num-fewshot", "2")
    assert code == 2 and "go with --tasks" in stderr
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: importing it fails
    code, _, stderr = run("eval", compressed_dir, "--tasks", "wikitext")
    assert code == 2 and "Traceback" not in stderr
    assert "lm-evaluation-harness, which is not installed" in stderr and 'pip install "lm-eval' in stderr


def test_unknown_task_lists_close_names(run, compressed_dir, tmp_path):
    include = write_tasks(tmp_path / "tasks")
    # the local folder does not have it, so lm-eval's whole catalogue is searched (~20 s to index)
    code, _, stderr = run("eval", compressed_dir, "--tasks", "arc_eazy", "--tasks-include", include)
    assert code == 2 and "Traceback" not in stderr
    assert "unknown lm-eval task 'arc_eazy'" in stderr and "arc_easy" in stderr
