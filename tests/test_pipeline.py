"""The sequential pipeline: statistics per modality, inputs after compression, layouts, resume."""

import pytest
import torch

import compress_fixtures as F
from llava_fa.errors import ConfigError, DataError
from llava_fa.methods import build_config, get_method
from llava_fa.pipeline import compress_model
from llava_fa.selection import default_patterns, find_parts, select


class Spy:
    """Wraps a method: records the statistics each layer got and counts compress calls."""

    def __init__(self, method):
        self.inner, self.calls, self.stats = method, [], {}
        self.name, self.needs = method.name, method.needs

    def check_layer(self, name, linear):
        self.inner.check_layer(name, linear)

    def compress(self, weight, stats, bias=None):
        self.calls.append(weight.shape)
        if stats is not None:
            self.stats[len(self.calls) - 1] = stats
        return self.inner.compress(weight, stats, bias)


def method(name="gptq", **options):
    return get_method(name)(build_config(name, {"group_size": 32, **options}))


def decoder_names(model):
    return select(model, *default_patterns(find_parts(model)))


def capture_inputs(model, module_name, samples):
    """Inputs of `module_name` when `model` runs on `samples` (as it is now)."""
    seen = []
    h = model.get_submodule(module_name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        for s in samples:
            model(**s)
    h.remove()
    return seen


def test_statistics_split_by_modality_and_taken_after_earlier_layers():
    model = F.llava()
    samples = [F.llava_inputs(seed=0), F.text_inputs(seed=1)]
    names = decoder_names(model)
    spy = Spy(method("gptq", bits=2))  # 2 bits: compressing layer 0 visibly changes layer 1's inputs; gptq needs X^T X
    dense_inputs = capture_inputs(model, names[7], samples)  # layer 1 q_proj, before compression
    compress_model(model, spy, names, samples)
    after_inputs = capture_inputs(model, names[7], samples)  # layer 1 q_proj, layer 0 compressed
    st = spy.stats[7]
    assert st.tokens == {"image": 4, "text": 12 + 16}
    mask = samples[0]["input_ids"][0] == F.IMAGE_ID
    img = after_inputs[0][0][mask]
    txt = torch.cat([after_inputs[0][0][~mask], after_inputs[1][0]])
    torch.testing.assert_close(st.xtx["image"], img.T @ img, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(st.xtx["text"], txt.T @ txt, rtol=1e-4, atol=1e-4)
    dense_txt = torch.cat([dense_inputs[0][0][~mask], dense_inputs[1][0]])
    assert not torch.allclose(st.xtx["text"], dense_txt.T @ dense_txt, rtol=1e-3, atol=1e-3)
    # q, k and v read the same tensor: equal statistics
    assert torch.equal(spy.stats[0].xtx["text"], spy.stats[1].xtx["text"])


def test_collector_second_moments_and_forced_modality():
    from llava_fa.calibration.stats import StatsCollector

    lin, other = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    x = torch.randn(1, 6, 8)
    mask = torch.tensor([[False, True, True, False, False, False]])
    with StatsCollector({"a": lin, "b": other}, {"sq"}, modality={"b": "image"}) as col:
        col.new_sample(mask)
        lin(x)
        other(x)
    a, b = col.stats["a"], col.stats["b"]
    assert a.tokens == {"image": 2, "text": 4} and b.tokens == {"image": 6, "text": 0}
    assert not a.xtx  # only what was asked for
    torch.testing.assert_close(a.sq["image"], (x[0, 1:3] ** 2).sum(0))
    torch.testing.assert_close(a.mean_sq(), (x[0] ** 2).mean(0))
    torch.testing.assert_close(b.sq["image"], (x[0] ** 2).sum(0))


LAYOUTS = {
    "llava-dinov2": (F.llava, F.llava_inputs, 4),
    "llava-clip": (lambda: F.llava("clip"), F.llava_inputs, 4),
    "qwen2-vl": (F.qwen2vl, F.qwen2vl_inputs, 4),
    "qwen2.5-vl": (lambda: F.qwen2vl(v25=True), F.qwen2vl_inputs, 4),
    "idefics3": (F.idefics3, F.idefics3_inputs, 1),
    "llama": (F.llama, F.text_inputs, 0),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gptq_8bit_on_every_layout(layout):
    build, inputs, n_image = LAYOUTS[layout]
    model = build()
    samples = [inputs(seed=0), inputs(seed=1), F.text_inputs(seed=2)]
    with torch.no_grad():
        ref = [model(**s).logits for s in samples]
    spy = Spy(method("gptq", bits=8))
    blocks = []
    rows = compress_model(model, spy, decoder_names(model), samples, on_block=lambda *a: blocks.append(a))
    assert [b[:2] for b in blocks] == [(1, 2), (2, 2)]
    assert len(rows) == 14 and all(r.act_error is not None and r.act_error < 0.01 for r in rows)
    assert spy.stats[0].count("image") == 2 * n_image
    with torch.no_grad():
        for s, r in zip(samples, ref):
            out = model(**s).logits
            assert ((out - r).norm() / r.norm()) < 0.02


def test_vision_projector_and_head_targets():
    model = F.llava()
    parts = find_parts(model)
    targets, ignore = default_patterns(parts, vision=True, projector=True)
    names = select(model, targets + ["lm_head"], ignore)
    samples = [F.llava_inputs(seed=0), F.text_inputs(seed=1)]
    spy = Spy(method("gptq", bits=8))
    labels = []
    rows = compress_model(model, spy, names, samples, on_block=lambda d, t, label: labels.append(label))
    assert labels == ["pre", "layer 1/2", "layer 2/2", "post"]
    by_name = {r.name: i for i, r in enumerate(rows)}
    vision_q = spy.stats[by_name["model.vision_tower.encoder.layer.0.attention.q_proj"]]
    assert vision_q.tokens == {"image": 5, "text": 0}  # 4 patches + CLS, all image features
    head = spy.stats[by_name["lm_head"]]
    assert head.tokens == {"image": 4, "text": 28}
    assert {r.block for r in rows} == {"pre", "layer_000", "layer_001", "post"}


def test_text_only_calibration_cannot_calibrate_the_vision_tower():
    model = F.llava()
    names = select(model, *default_patterns(find_parts(model), vision=True))
    with pytest.raises(DataError, match="saw no calibration tokens.*easyvqa"):
        compress_model(model, method("gptq"), names, [F.text_inputs()])


def test_rtn_without_calibration_data():
    model = F.llava()
    rows = compress_model(model, method("rtn", bits=4), decoder_names(model), [])
    assert len(rows) == 14 and all(r.act_error is None and r.bpw == 4 + 20 / 32 for r in rows)
    with pytest.raises(ConfigError, match="needs calibration data"):
        compress_model(F.llava(), method("gptq"), decoder_names(F.llava()), [])


def test_bad_weights_fail_before_any_work(tmp_path):
    model = F.llava()
    names = decoder_names(model)
    with torch.no_grad():
        model.get_submodule(names[3]).weight[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN/Inf"):
        compress_model(model, method("rtn"), names, [F.text_inputs()], work_dir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_nan_and_inf_and_survives_an_overflowing_sum(bad):
    from llava_fa.pipeline.planning import all_finite

    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(64, 32).to(dtype)
        assert all_finite(w)
        w[5, 7] = bad
        assert not all_finite(w)
    huge = torch.full((4, 4), 3e38)  # finite, but the float32 sum overflows to inf
    assert not torch.isfinite(huge.sum()) and all_finite(huge)
    huge[0, 0] = float("inf") if bad != float("-inf") else bad
    assert not all_finite(huge)


def test_resume_from_the_last_finished_layer(tmp_path):
    samples = [F.llava_inputs(seed=0), F.text_inputs(seed=1)]
    reference = F.llava(layers=3)
    names = decoder_names(reference)
    compress_model(reference, method("gptq", bits=3), names, samples)

    class Interrupt(Exception):
        pass

    def stop_after_two(done, total, label):
        if done == 2:
            raise Interrupt

    work = tmp_path / "work"
    first = F.llava(layers=3)
    with pytest.raises(Interrupt):
        compress_model(first, method("gptq", bits=3), names, samples, work_dir=work,
                       fingerprint="run-a", on_block=stop_after_two)
    assert sorted(p.name for p in work.glob("*.json")) == ["layer_000.json", "layer_001.json", "state.json"]

    with pytest.raises(ConfigError, match="another model, recipe"):
        compress_model(F.llava(layers=3), method("gptq", bits=3), names, samples, work_dir=work,
                       fingerprint="run-b")

    resumed = F.llava(layers=3)
    spy = Spy(method("gptq", bits=3))
    rows = compress_model(resumed, spy, names, samples, work_dir=work, fingerprint="run-a")
    assert len(spy.calls) == 7 and len(rows) == 21  # only layer 2 was compressed again
    for name in names:
        assert torch.equal(resumed.get_submodule(name).dequantize(), reference.get_submodule(name).dequantize()), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_matches_cpu_and_keeps_the_model_home():
    samples = [F.llava_inputs(seed=0), F.text_inputs(seed=1)]
    on_cpu, on_cuda = F.llava(), F.llava()
    names = decoder_names(on_cpu)
    rows_cpu = compress_model(on_cpu, method("gptq", bits=4), names, samples, device="cpu")
    rows_cuda = compress_model(on_cuda, method("gptq", bits=4), names, samples, device="cuda")
    assert all(t.device.type == "cpu" for t in [*on_cuda.parameters(), *on_cuda.buffers()])
    for a, b in zip(rows_cpu, rows_cuda):
        assert a.name == b.name and a.storage_bits == b.storage_bits
        assert b.act_error == pytest.approx(a.act_error, rel=0.1, abs=1e-3)
    with torch.no_grad():
        ref = on_cpu(**samples[0]).logits
        gpu = on_cuda.cuda()(**{k: v.cuda() for k, v in samples[0].items()}).logits.cpu()
    assert ((gpu - ref).norm() / ref.norm()) < 0.02


def test_compression_runs_deterministic_kernels_on_cuda_only(monkeypatch):
    """pipeline/devices.reproducible: CUDA's atomics made fa store different codes run to run."""
    import os

    from llava_fa.pipeline.devices import reproducible

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored after the test

    before = torch.are_deterministic_algorithms_enabled()
    with reproducible(torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() == before
    with reproducible(torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled() == before


def test_dense_pass_runs_cached_weights_on_cuda_and_restores_the_modes():
    """pipeline/devices.dense_pass: the pass after a block on CUDA uses one dense weight per module, then
    drops it; an explicitly chosen mode is left alone, and CPU keeps every mode."""
    from llava_fa.formats import AffineLinear
    from llava_fa.pipeline.devices import dense_pass
    from llava_fa.quantizers import AffineSpec, quantize_grouped

    def layer():
        codes, scale, zero = quantize_grouped(torch.randn(8, 16), AffineSpec(4, 8, False))
        return AffineLinear.from_codes(codes, scale, zero, bits=4, sym=False)

    block = torch.nn.Sequential(layer(), layer())
    block[1].forward_mode = "dequant"
    x = torch.randn(3, 16)
    with dense_pass(block, torch.device("cpu")):
        assert [getattr(m, "forward_mode", "auto") for m in block] == ["auto", "dequant"]
    with dense_pass(block, torch.device("cuda")):  # the modes only: the layers themselves stay on the CPU
        assert [getattr(m, "forward_mode", "auto") for m in block] == ["cached", "dequant"]
        y = block[0](x)
        assert block[0].__dict__["_cache"]  # the dense weight, built once
    assert [getattr(m, "forward_mode", "auto") for m in block] == ["auto", "dequant"] and not block[0].__dict__["_cache"]
    assert torch.equal(y, torch.nn.functional.linear(x, block[0].dequantize(torch.float32)))
