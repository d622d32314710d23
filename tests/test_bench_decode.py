"""`llava-fa bench-decode`: the static-cache greedy loop, the data-free encoders, records and option errors (CPU)."""

import json

import pytest
import torch

import compress_fixtures as F
from llava_fa.evaluation.decode_speed import DecodeSpec, measure, static_greedy, weight_memory
from llava_fa.evaluation.synthetic import compress_decoder, encode_linear, parse_format, parse_formats, random_llama
from llava_fa.formats import CompressedLinear

TINY = {"layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "vocab": 256}
TINY_ARGS = ["--synthetic", "7b", "--layers", "2", "--hidden", "64", "--intermediate", "128", "--heads", "4",
             "--vocab", "256"]
FAST_ARGS = ["--batch", "1,2", "--prompt", "16", "--new-tokens", "8", "--warmup", "1", "--repeats", "1",
             "--device", "cpu", "--dtype", "float32"]


def test_static_cache_loop_equals_generate():
    model = random_llama(TINY, "cpu", torch.float32, seed=1)
    prompt = torch.randint(0, TINY["vocab"], (2, 12), generator=torch.Generator().manual_seed(0))
    tokens, info = static_greedy(model, prompt, 8, warmup=2)
    ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                         pad_token_id=0)
    assert torch.equal(tokens, ref[:, prompt.shape[1]:])
    assert info == {"cuda_graph": False, "graph_error": None}


def test_compiled_steps_give_the_same_tokens():
    """The decode step through torch.compile (the "eager" backend here: dynamo's tracing and its breaks at
    each compressed layer, without inductor's code generation) gives the eager loop's tokens, with
    compressed linears among the traced modules."""
    model = random_llama(TINY, "cpu", torch.float32, seed=1)
    compress_decoder(model, parse_format("fourier:mag_bits=3:phase_bits=3"))
    prompt = torch.randint(0, TINY["vocab"], (2, 12), generator=torch.Generator().manual_seed(0))
    ref, _ = static_greedy(model, prompt, 6, warmup=1)
    torch._dynamo.reset()
    got, _ = static_greedy(model, prompt, 6, warmup=1, compile_backend="eager")
    assert torch.equal(got, ref)


# (entry, max relative Frobenius error of the dequantized weight, bpw range)
ENCODINGS = [("affine:bits=4", 0.15, (4.1, 4.4)), ("affine:bits=2:group_size=32", 0.5, (2.5, 2.7)),
             ("fourier:mag_bits=3:phase_bits=3", 0.3, (3.0, 3.3)), ("fourier:transform=rfft2", 0.3, (3.0, 3.3)),
             ("fourier:mag_bits=2:phase_bits=3", 0.35, (2.5, 2.8)), ("binary", 0.65, (1.0, 2.6))]


@pytest.mark.parametrize("entry,max_err,bpw", ENCODINGS)
def test_encoders_approximate_the_weight(entry, max_err, bpw):
    W = torch.randn(128, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    bias = torch.randn(128) * 0.01
    layer = encode_linear(W, bias, parse_format(entry))
    err = ((layer.dequantize() - W).norm() / W.norm()).item()
    assert err < max_err
    assert bpw[0] <= layer.bits_per_weight() <= bpw[1]
    x = torch.randn(3, 256)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.dequantize(), bias), atol=1e-4)


def test_binary_codes_are_about_one_bit():
    layer = encode_linear(torch.randn(64, 512) * 0.02, None, parse_format("binary:salient_frac=0.05"))
    assert 1.0 < layer.bpw_conventions()["codes"] < 1.1


def test_compress_decoder_swaps_every_decoder_linear_and_measure_reports():
    model = random_llama(TINY, "cpu", torch.float32)
    facts = compress_decoder(model, parse_format("affine:bits=4:group_size=64"))
    assert facts["linears"] == 14 and facts["bits_per_weight"] == pytest.approx(4 + (16 + 4) / 64)
    assert sum(isinstance(m, CompressedLinear) for m in model.modules()) == 14
    assert isinstance(model.lm_head, torch.nn.Linear)
    before = weight_memory(model)["weight_bytes"]
    r = measure(model, DecodeSpec(batch_sizes=(1, 2), prompt_len=8, new_tokens=4, warmup=1, repeats=1), "cpu")
    assert r["compressed_layers"] == 14 and r["backends"] == {"affine": "cached_forward"}
    # CPU's "auto" caches dense weights: counted as workspace memory
    assert r["memory"]["workspace_bytes"] > 0 and r["memory"]["weight_bytes"] > before


def test_cli_writes_one_record_per_format(run, tmp_path):
    out = tmp_path / "records"
    code, stdout, err = run("bench-decode", *TINY_ARGS, *FAST_ARGS, "--json-dir", out,
                            "--formats", "bf16,affine:bits=4,fourier:mag_bits=2:phase_bits=3,binary")
    assert code == 0, err
    names = sorted(p.stem for p in out.glob("*.json"))
    assert len(names) == 4 and not list(out.glob(".*tmp*"))
    for path in out.glob("*.json"):
        r = json.loads(path.read_text())
        for key in ("name", "format", "bits_per_weight", "prefill", "decode", "memory", "spec", "environment"):
            assert key in r
        assert r["prefill"]["ttft_ms"] > 0 and r["memory"]["weight_bytes"] > 0
        assert r["environment"]["cuda_kernels"] == {}  # on CPU no CUDA kernel is asked for
        assert set(r["decode"]) == {"1", "2"}
        assert all(d["tokens_per_s"] > 0 and d["cuda_graph"] is False for d in r["decode"].values())
        assert ("synthetic" in r["note"]) and r["compressed_layers"] == (0 if r["format"] == "bf16" else 14)
    assert "affine:bits=4" in stdout and "fourier:mag_bits=2:phase_bits=3" in stdout


def test_cli_on_compressed_folders(run, tmp_path):
    from llava_fa.pipeline import compress_checkpoint
    from llava_fa.recipe import Recipe

    dense = F.save_llama_dir(tmp_path / "dense")
    recipe = Recipe(method="rtn", options={"bits": 4, "group_size": 32})
    recipe.calibration.nsamples = 0
    compress_checkpoint(dense, recipe, tmp_path / "rtn4")
    out = tmp_path / "records"
    code, stdout, err = run("bench-decode", dense, tmp_path / "rtn4", *FAST_ARGS, "--json-dir", out)
    assert code == 0, err
    rtn = json.loads((out / "rtn4.json").read_text())
    assert rtn["format"] == "affine" and rtn["compressed_layers"] > 0 and rtn["bits_per_weight"] < 5
    assert json.loads((out / "dense.json").read_text())["compressed_layers"] == 0


@pytest.mark.parametrize("args,message", [
    ([], "one of the two"),
    (["--synthetic", "13b"], "--synthetic"),
    ([*TINY_ARGS, "--formats", "int4"], "unknown format"),
    ([*TINY_ARGS, "--formats", "affine:bits=9"], "bits"),
    ([*TINY_ARGS, "--formats", "affine:colour=red"], "KEY=VALUE"),
    ([*TINY_ARGS, "--formats", "fourier:transform=fft2"], "rfft"),
    ([*TINY_ARGS, "--batch", "1,0"], "--batch"),
    ([*TINY_ARGS, "--new-tokens", "0"], "new_tokens"),
    ([*TINY_ARGS, "--forward-mode", "warp"], "--forward-mode"),
    ([*TINY_ARGS, "--formats", "fourier", "--forward-mode", "gemlite"], "not a mode"),
    ([*TINY_ARGS, "--dtype", "int8"], "--dtype"),
    ([*TINY_ARGS, "--hidden", "65"], "multiple"),
])
def test_bad_options_are_one_line_errors(run, args, message):
    code, _, err = run("bench-decode", *args, "--device", "cpu")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Fix" in lines[0], err


def test_formats_in_folder_mode_and_a_missing_folder(run, tmp_path):
    code, _, err = run("bench-decode", tmp_path, "--formats", "bf16", "--device", "cpu")
    assert code == 2 and "--formats applies to --synthetic only" in err
    code, _, err = run("bench-decode", tmp_path / "nope", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_parse_formats_rejects_duplicates():
    from llava_fa.errors import ConfigError

    assert [s.name for s in parse_formats("bf16,affine:bits=3")] == ["bf16", "affine_bits3"]
    with pytest.raises(ConfigError, match="twice"):
        parse_formats("affine:bits=3,affine:bits=3")
