"""`llava-fa bench`: one record per run, resumes, rejects bad run lists."""

import json

import pytest

import compress_fixtures as F
from llava_fa import bench
from llava_fa.errors import ConfigError

TEXT = "\n\n".join(" ".join(f"word{(i * 7 + j) % 50} and more text" for j in range(8)) for i in range(40))


@pytest.fixture
def setup(tmp_path):
    model = F.save_llama_dir(tmp_path / "llama")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    runs = tmp_path / "runs.yaml"
    runs.write_text("- {name: rtn8, method: rtn, options: {bits: 8, group_size: 32}, nsamples: 0}\n"
                    "- {name: rtn2, method: rtn, options: {bits: 2, group_size: 32}, nsamples: 0}\n")
    return model, text, runs, tmp_path / "records"


def test_records_and_resume(setup, monkeypatch):
    model, text, runs, out = setup
    kwargs = dict(device="cpu", ppl_windows=2, seqlen=64, text_source=str(text), on_info=lambda msg: None)
    records = bench.run_bench(model, bench.load_runs(runs), out, **kwargs)
    assert [r["name"] for r in records] == ["rtn8", "rtn2"]
    r8, r2 = records
    # codes + an fp16 scale and a packed zero of `bits` bits per group of 32
    assert r8["bpw"] == pytest.approx(8 + (16 + 8) / 32) and r2["bpw"] == pytest.approx(2 + (16 + 2) / 32)
    assert r8["kl"] < r2["kl"] and r8["top1_agreement"] >= r2["top1_agreement"]
    assert r8["perplexity"] > 0 and r8["compress_seconds"] >= 0 and r8["peak_memory_mib"] > 0
    assert json.loads((out / "rtn2.json").read_text())["name"] == "rtn2"
    assert not (out / "models" / "rtn8").exists()  # compressed folders are dropped unless --keep-models

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was compressed again")

    monkeypatch.setattr("llava_fa.pipeline.compress_checkpoint", must_not_run)
    again = bench.run_bench(model, bench.load_runs(runs), out, **kwargs)
    assert [r["bpw"] for r in again] == [r["bpw"] for r in records]


@pytest.mark.parametrize("content,message", [
    ("{name: x}", "non-empty list"),
    ("- {method: rtn}", "needs at least 'name' and 'method'"),
    ("- {name: a, method: rtn, bits: 3}", "unknown key"),
    ("- {name: a, method: rtn}\n- {name: a, method: gptq}", "unique"),
])
def test_bad_run_lists(tmp_path, content, message):
    path = tmp_path / "runs.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        bench.load_runs(path)
    with pytest.raises(ConfigError, match="does not exist"):
        bench.load_runs(tmp_path / "missing.yaml")
