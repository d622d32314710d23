"""`llava-fa compress` and `llava-fa chat` end to end on a tiny LLaVA, and their bad-input paths."""

import json

import pytest
import torch
from PIL import Image

import compress_fixtures as F
from llava_fa.formats import AffineLinear


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return F.save_llava_dir(tmp_path_factory.mktemp("dense") / "tiny-llava")


@pytest.fixture
def easyvqa(tmp_path, monkeypatch):
    """A four-example stand-in for easy-VQA (same files and layout), and no WikiText-2."""
    root = tmp_path / "easyvqa"
    (root / "train" / "images").mkdir(parents=True)
    rows = []
    examples = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "square")]
    for i, (color, shape) in enumerate(examples):
        Image.new("RGB", (64, 64), color).save(root / "train" / "images" / f"{i}.png")
        rows.append(["what shape is in the image?", shape, i])
    (root / "train" / "questions.json").write_text(json.dumps(rows))
    (root / "answers.txt").write_text("circle\nsquare\ntriangle\n")
    monkeypatch.setattr("llava_fa.testbed.easyvqa.easy_vqa_root", lambda: root)
    monkeypatch.setenv("LLAVA_FA_DATA", str(tmp_path / "no-data"))
    return root


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_compress_then_load_and_chat(run, dense_dir, easyvqa, tmp_path):
    from transformers import LlavaForConditionalGeneration

    out, report = tmp_path / "q", tmp_path / "report.json"
    code, stdout, stderr = run("compress", dense_dir, "--method", "gptq", "--bits", "4", "--group-size", "32",
                               "--act-order", "--nsamples", "4", "--seqlen", "24", "--out", out, "--report", report,
                               "--device", "cpu")
    assert code == 0, stderr
    assert "WikiText-2 not found" in stderr and "2 easy-VQA image+text samples" in stderr
    assert "wrote" in stderr and "4.6250 bits per weight" in stderr
    assert "total (14 layers)" in stdout and "act err" in stdout
    rows = json.loads(report.read_text())["layers"]
    assert len(rows) == 14
    assert set(rows[0]) >= {"name", "out_features", "in_features", "method", "bpw", "rel_error", "act_error", "seconds"}
    assert all(r["method"] == "gptq" and r["bpw"] == 4.625 and 0 < r["rel_error"] < 0.3 for r in rows)
    assert json.loads((out / "compress_report.json").read_text())["layers"] == rows
    assert _leftovers(tmp_path) == ["easyvqa", "q", "report.json"]  # work dir and temporaries gone

    model = LlavaForConditionalGeneration.from_pretrained(out)
    q = model.get_submodule(rows[0]["name"])
    assert isinstance(q, AffineLinear) and q.params() == {"bits": 4, "group_size": 32, "sym": False}

    code, stdout, stderr = run("chat", out, "--image", easyvqa / "train" / "images" / "0.png", "What shape?",
                               "--max-new-tokens", "3", "--device", "cpu")
    assert code == 0, stderr
    code, stdout, stderr = run("chat", out, "Hello?", "--max-new-tokens", "3")
    assert code == 0, stderr
    for mode in ("dequant", "fused"):  # the same layers computed without a cached dense weight
        code, same, stderr = run("chat", out, "Hello?", "--max-new-tokens", "3", "--forward-mode", mode)
        assert code == 0 and same == stdout, stderr
    code, _, stderr = run("chat", out, "Hello?", "--forward-mode", "spectral")
    assert code == 2 and "'spectral' is not available for 14 of the 14" in stderr and "'affine'" in stderr


def test_recipe_file_with_flag_overrides(run, dense_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: rtn\noptions: {bits: 8, group_size: 64}\nignore: ['re:.*down_proj']\n"
                      "calibration: {source: builtin, nsamples: 2, seqlen: 16}\n")
    out = tmp_path / "q"
    code, _, stderr = run("compress", dense_dir, "--recipe", recipe, "--bits", "2", "--out", out, "--quiet")
    assert code == 0, stderr
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "rtn" and qc["method_config"] == {"bits": 2, "group_size": 64, "sym": False}
    assert len(qc["modules"]) == 12 and not any(n.endswith("down_proj") for n in qc["modules"])
    assert qc["ignore"] == ["re:.*down_proj"]

    as_json = tmp_path / "recipe.json"
    as_json.write_text(json.dumps({"method": "gptq", "targets": ["re:.*self_attn"], "vision": True,
                                   "calibration": {"source": "builtin", "nsamples": 2}}))
    code, _, stderr = run("compress", dense_dir, "--recipe", as_json, "--calib", "builtin", "--nsamples", "0",
                          "--method", "rtn", "--group-size", "32", "--out", tmp_path / "q2", "--quiet")
    assert code == 0, stderr
    modules = json.loads((tmp_path / "q2" / "config.json").read_text())["quantization_config"]["modules"]
    assert any("vision_tower" in n for n in modules)
    assert {n.rsplit(".", 2)[-2] for n in modules if "language_model" in n} == {"self_attn"}


@pytest.fixture(scope="module")
def nan_dir(tmp_path_factory):
    from transformers import LlavaForConditionalGeneration

    path = F.save_llava_dir(tmp_path_factory.mktemp("nan") / "nan-llava")
    model = LlavaForConditionalGeneration.from_pretrained(path)
    with torch.no_grad():
        model.model.language_model.layers[1].mlp.up_proj.weight[3, 3] = float("inf")
    model.save_pretrained(path)
    return path


BAD_COMPRESS = [
    (["--method", "awq"], "unknown method 'awq'"),
    (["--method", "rtn", "--act-order"], "has no option 'act_order'"),
    (["-O", "foo=1"], "no option 'foo'"),
    (["-O", "novalue"], "KEY=VALUE"),
    (["--bits", "9"], "from 1 to 8"),
    (["--bits", "0"], "from 1 to 8"),
    (["--target", "model.language_model.embed_tokens"], "not a linear layer"),
    (["--target", "re:nothing\\.here"], "matches no linear layer"),
    (["--ignore", "lm_head_typo"], "matches no module"),
    (["--group-size", "0"], "positive or -1"),
    (["--calib", "missing.txt"], "neither one of"),
    (["--nsamples", "-1"], "--nsamples must be >= 0"),
    (["--dtype", "int4"], "--dtype must be"),
    (["--device", "tpu"], "unknown device"),
]


@pytest.mark.parametrize("args, message", BAD_COMPRESS)
def test_compress_bad_input(run, dense_dir, tmp_path, args, message):
    code, _, stderr = run("compress", dense_dir, "--out", tmp_path / "q", "--calib", "builtin", "--nsamples", "1",
                          "--seqlen", "8", "--quiet", *args)
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
    assert _leftovers(tmp_path) == []


def test_compress_bad_model_and_outputs(run, dense_dir, nan_dir, tmp_path):
    def compress(model, *extra):
        return run("compress", model, "--out", tmp_path / "q", "--nsamples", "0", "--quiet", *extra)

    code, _, err = compress(nan_dir)
    assert code == 2 and "NaN/Inf" in err and "up_proj" in err
    code, _, err = compress(tmp_path / "absent")
    assert code == 2 and "does not exist" in err
    bad_recipe = tmp_path / "r.yaml"
    bad_recipe.write_text("method: rtn\nbitz: 3\n")
    code, _, err = compress(dense_dir, "--recipe", bad_recipe)
    assert code == 2 and "unknown key(s) bitz" in err
    bad_recipe.write_text("method: [rtn\n")
    code, _, err = compress(dense_dir, "--recipe", bad_recipe)
    assert code == 2 and "cannot parse recipe" in err
    bad_recipe.unlink()
    import shutil

    truncated = shutil.copytree(dense_dir, tmp_path / "truncated")
    (truncated / "model.safetensors").write_bytes((dense_dir / "model.safetensors").read_bytes()[:5000])
    code, _, err = compress(truncated)
    assert code == 2 and "truncated or corrupted" in err and "Traceback" not in err
    shutil.rmtree(truncated)
    if not torch.cuda.is_available():
        code, _, err = compress(dense_dir, "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err
    assert _leftovers(tmp_path) == []
    (tmp_path / "q").mkdir()
    code, _, err = compress(dense_dir)
    assert code == 2 and "already exists" in err
    code, _, err = compress(tmp_path / "q")
    assert code == 2 and "already exists" in err  # checked before anything is loaded


def test_compress_refuses_a_compressed_model(run, dense_dir, tmp_path):
    assert run("compress", dense_dir, "--out", tmp_path / "q", "--nsamples", "0", "--quiet")[0] == 0
    code, _, err = run("compress", tmp_path / "q", "--out", tmp_path / "qq", "--nsamples", "0", "--quiet")
    assert code == 2 and "already compressed" in err


def test_chat_bad_input(run, dense_dir, tmp_path):
    import shutil

    good = tmp_path / "good"
    assert run("compress", dense_dir, "--out", good, "--nsamples", "0", "--quiet")[0] == 0
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a PNG")
    truncated = shutil.copytree(good, tmp_path / "truncated")
    (truncated / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    missing = shutil.copytree(good, tmp_path / "missing")
    (missing / "model.safetensors").unlink()
    cases = [
        ((tmp_path / "absent", "hi"), "does not exist"),
        ((truncated, "hi"), "truncated or corrupted"),
        ((missing, "hi"), "missing file"),
        ((good, "hi", "--image", not_image), "cannot read image"),
        ((good, "hi", "--image", tmp_path / "absent.png"), "does not exist"),
    ]
    for args, message in cases:
        code, _, err = run("chat", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compress_and_chat_on_cuda(run, dense_dir, tmp_path):
    out = tmp_path / "q"
    code, _, err = run("compress", dense_dir, "--method", "gptq", "--group-size", "32", "--calib", "builtin",
                       "--nsamples", "2", "--seqlen", "16", "--device", "cuda", "--out", out, "--quiet")
    assert code == 0, err
    code, _, err = run("chat", out, "Hello?", "--max-new-tokens", "3", "--device", "cuda")
    assert code == 0, err


def test_interrupted_compress_resumes(run, dense_dir, tmp_path, monkeypatch):
    from llava_fa.methods.gptq import GPTQ

    real, calls = GPTQ.compress, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 8:  # the first linear of layer 1
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    args = ("compress", dense_dir, "--method", "gptq", "--group-size", "32", "--calib", "builtin", "--nsamples", "2",
            "--seqlen", "16", "--out", tmp_path / "q")
    monkeypatch.setattr(GPTQ, "compress", interrupted)
    code, _, err = run(*args)
    assert code == 130 and "run the same command again to resume" in err
    assert _leftovers(tmp_path) == [".q.work"]
    assert sorted(p.name for p in (tmp_path / ".q.work").glob("*.json")) == ["layer_000.json", "state.json"]
    monkeypatch.setattr(GPTQ, "compress", real)
    code, _, err = run(*args)
    assert code == 0 and "resuming from" in err and "1 finished block" in err, err
    assert _leftovers(tmp_path) == ["q"]


@pytest.mark.slow
def test_testbed_rtn_8bit_answers_like_the_original(run, testbed_dir, tmp_path):
    """The real testbed: calibration-free RTN at 8 bits, every decoder linear, same answer."""
    from llava_fa.testbed import easyvqa

    out = tmp_path / "rtn8"
    code, _, err = run("compress", testbed_dir, "--method", "rtn", "--bits", "8", "--nsamples", "0", "--out", out,
                       "--device", "cpu", "--quiet")
    assert code == 0, err
    report = json.loads((out / "compress_report.json").read_text())
    assert report["summary"]["layers"] == 210 and report["summary"]["bpw"] == 8 + 24 / 64
    ex = easyvqa.load_split("test")[0]
    answers = []
    for model in (testbed_dir, out):
        code, answer, err = run("chat", model, "--image", ex.image_path, easyvqa.user_text(ex.question))
        assert code == 0, err
        answers.append(easyvqa.normalize_answer(answer))
    assert answers[0] == answers[1] == ex.answer


def _results_rows() -> dict[str, list[str]]:
    """The run rows of docs/RESULTS.md's tables: name -> cells (flags, bpw, PPL, easy-VQA, KL, ...)."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "RESULTS.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 6 and cells[1].startswith("`-m "):
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_presets_are_the_measured_runs():
    """Every preset is a run of examples/bench_testbed.yaml with the same method and options, and its
    bpw, perplexity, accuracy and KL are those docs/RESULTS.md reports for that run."""
    from pathlib import Path

    import yaml

    from llava_fa.methods.base import build_config
    from llava_fa.methods.presets import PRESETS

    runs = {r["name"]: r for r in yaml.safe_load((Path(__file__).parents[1] / "examples" /
                                                  "bench_testbed.yaml").read_text())}
    rows = _results_rows()
    for method, presets in PRESETS.items():
        for p in presets:
            assert runs[p.run]["method"] == method and runs[p.run].get("options", {}) == dict(p.options), p.run
            build_config(method, dict(p.options))
            _, bpw, ppl, vqa, kl = rows[p.run][:5]
            assert (float(bpw), float(ppl.replace(",", "")), float(vqa.rstrip("%")), float(kl)) == pytest.approx(
                (p.bpw, p.ppl, 100 * p.vqa, p.kl)), p.run


def test_help_method_prints_the_presets(run):
    code, out, _ = run("compress", "--help-method", "fa")
    assert code == 0 and "recommended options by budget" in out
    assert "-O structure=quant -O mag_bits=3 -O phase_bits=5 -O odc=calibrated" in out and "[fa4q_odccal]" in out
    code, out, _ = run("compress", "--help-method", "sab")
    assert code == 0 and "~1.1 sign" in out and "[sab_q75]" in out
