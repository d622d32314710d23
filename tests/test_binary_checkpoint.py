"""The `binary` format (pb-llm, billm, arb, arb-x, arb-rc, sab) through save / from_pretrained, and on CUDA."""

import copy
import json

import pytest
import torch

import compress_fixtures as F
import llava_fa  # noqa: F401  (registers the quantizer with transformers)
from llava_fa.io.checkpoint import quantization_config, save_compressed
from llava_fa.io.files import read_header
from llava_fa.io.modules import build_module
from llava_fa.formats.binary import BinaryLinear
from llava_fa.methods import LayerStats, build_config, get_method
from llava_fa.pipeline import compress_model, default_patterns, find_parts, select, summarize

BINARY = ["pb-llm", "billm", "arb", "arb-x", "arb-rc", "sab"]
ROUND_TRIP = ["billm", "sab", "pb-llm"]  # order-2 residual + bitmap; + column scales; + 8-bit outliers
NBYTES = {"U8": 1, "I16": 2}


@pytest.fixture(scope="module", params=ROUND_TRIP)
def saved(request, tmp_path_factory):
    """A tiny LLaVA, its decoder binarized by one method (block 32: several blocks per row), saved."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    name = request.param
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # LAPACK on 2 shared cores stalls with 2 threads
    try:
        root = tmp_path_factory.mktemp(f"bin-{name}")
        F.save_llava_dir(root / "dense")
        model = LlavaForConditionalGeneration.from_pretrained(root / "dense").eval()
        names = select(model, *default_patterns(find_parts(model)))
        meth = get_method(name)(build_config(name, {"block_size": 32}))
        samples = [F.llava_inputs(seed=0), F.llava_inputs(seed=1), F.text_inputs(seed=2)]
        rows = compress_model(model, meth, names, samples)
        report = {"summary": summarize(rows), "layers": [r.to_dict() for r in rows]}
        qc = quantization_config(model, name, meth.config.to_dict(), ["Linear"], [])
        out = save_compressed(model, root / "q", qc, AutoProcessor.from_pretrained(root / "dense"), report=report)
    finally:
        torch.set_num_threads(old)
    return name, model, out, names


def test_from_pretrained_gives_the_in_memory_binarized_model(saved):
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    name, model, out, names = saved
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "llava_fa" and cfg["method"] == name and cfg["method_config"]["block_size"] == 32
    assert set(cfg["modules"]) == set(names)
    for n in names:
        entry = cfg["modules"][n]
        assert entry["format"] == "binary" and entry["params"] == model.get_submodule(n).params()
    inputs = F.llava_inputs(seed=3)
    with torch.no_grad():
        ref = model(**inputs).logits
    for cls in (LlavaForConditionalGeneration, AutoModelForImageTextToText):
        loaded = cls.from_pretrained(out).eval()
        for n in names:
            a, b = loaded.get_submodule(n), model.get_submodule(n)
            assert isinstance(a, BinaryLinear)
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), n
            assert torch.equal(a.dequantize(), b.dequantize()), n
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, ref, rtol=1e-4, atol=1e-4)
    # a bf16 load casts neither the sign bits nor the fp16 scales (int16 bit patterns)
    bf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16)
    for n in names:
        q = bf.get_submodule(n)
        assert q.row_scales.dtype == torch.int16 and q.signs.dtype == torch.uint8
        assert q.storage_bits() == model.get_submodule(n).storage_bits()
        assert torch.equal(q.dequantize(), model.get_submodule(n).dequantize())


def test_storage_bits_and_bpw_agree_with_config_disk_and_report(saved):
    name, model, out, names = saved
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    header = read_header(out / "model.safetensors")
    report = json.loads((out / "compress_report.json").read_text())
    rows = {r["name"]: r for r in report["layers"]}
    total_bits = total_weights = 0
    for n in names:
        mod = model.get_submodule(n)
        skeleton = build_module(n, cfg["modules"][n])  # from quantization_config alone
        stored = {k: v for k, v in header.items() if k.startswith(n + ".")}
        assert set(stored) == {f"{n}.{k}" for k in mod.state_dict()}
        for k, v in stored.items():
            t = skeleton.state_dict()[k[len(n) + 1:]]
            assert list(v["shape"]) == list(t.shape) and NBYTES[v["dtype"]] == t.element_size()
        on_disk = 8 * sum(v["data_offsets"][1] - v["data_offsets"][0] for v in stored.values())
        assert skeleton.storage_bits() == mod.storage_bits() == on_disk == rows[n]["storage_bits"]
        assert sum(mod.bits_breakdown().values()) == on_disk
        assert rows[n]["bits"] == mod.bits_breakdown()  # the report itemizes the stored bits
        weights = mod.in_features * mod.out_features
        assert rows[n]["bpw"] == pytest.approx(on_disk / weights)
        conv = mod.bpw_conventions()
        assert conv["stored"] == pytest.approx(rows[n]["bpw"])
        assert conv["codes"] <= conv["no_masks"] <= conv["stored"]
        # code bits: 1 sign bit per weight (rows padded to bytes), order-2 bits on the salient columns
        # (at most max_salient_frac of each block), 8 bits per pb-llm outlier (salient_frac of each block)
        o, i, p = mod.out_features, mod.in_features, cfg["method_config"]
        codes = o * -(-i // 8) * 8 + o * -(-mod.n_salient // 8) * 8 + 8 * mod.n_outliers
        assert conv["codes"] == pytest.approx(codes / weights)
        if name == "pb-llm":
            assert mod.n_salient == 0 and mod.n_outliers == pytest.approx(p["salient_frac"] * weights, abs=o * 2)
        else:
            assert mod.n_outliers == 0 and 0 < mod.n_salient <= p["max_salient_frac"] * i
        total_bits += on_disk
        total_weights += weights
    s = report["summary"]
    assert s["storage_bits"] == total_bits and s["weights"] == total_weights
    assert sum(s["bits_by_part"].values()) == total_bits
    assert s["bpw"] == pytest.approx(total_bits / total_weights)


# --- CUDA ----------------------------------------------------------------------------------------

def _problem(out_f=48, in_f=200, seed=0):
    """200 columns = 3 blocks of 64 + a partial one; text and image tokens of different scales."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    Xt = torch.randn(300, in_f, generator=g) * (torch.rand(in_f, generator=g) * 3)
    Xv = torch.randn(200, in_f, generator=g) * (torch.rand(in_f, generator=g) * 3)
    stats = LayerStats(in_f, xtx={"text": Xt.T @ Xt, "image": Xv.T @ Xv}, tokens={"text": 300, "image": 200})
    return W, stats


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", BINARY)
def test_binary_linear_on_cuda_matches_cpu(name):
    W, stats = _problem()
    mod = get_method(name)(build_config(name, {"block_size": 64})).compress(W, stats, torch.randn(48))
    ref = mod.dequantize()
    x = torch.randn(5, 7, 200)
    cpu_out = {}
    for mode in ("cached", "dequant"):
        mod.forward_mode = mode
        cpu_out[mode] = mod(x)
    cuda = copy.deepcopy(mod).to("cuda")
    assert all(t.device.type == "cuda" for t in cuda.state_dict().values())
    assert all(t.dtype == mod.state_dict()[k].dtype for k, t in cuda.state_dict().items())
    assert cuda.storage_bits() == mod.storage_bits()
    # unpacking and the reconstruction run on the GPU and give the same weight
    torch.testing.assert_close(cuda.dequantize().cpu(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda.dequantize(torch.float16).cpu(), ref.half(), rtol=1e-3, atol=1e-3)
    for mode in ("cached", "dequant"):
        cuda.forward_mode = mode
        with torch.no_grad():
            y = cuda(x.cuda())
        assert y.device.type == "cuda"
        # TF32 may be on for CUDA matmuls: the tolerance is relative to the output scale
        scale = float(cpu_out[mode].abs().max())
        torch.testing.assert_close(y.cpu(), cpu_out[mode], rtol=2e-3, atol=2e-3 * scale)
        with torch.no_grad():
            yh = cuda(x.cuda().half())
        assert yh.dtype == torch.float16
        torch.testing.assert_close(yh.float().cpu(), cpu_out[mode], rtol=1e-2, atol=1e-2 * scale)
    # compressing on the GPU gives the same stored layer up to float rounding of the search
    if name != "sab":  # sab's modality masks (quantiles, top-k ties) may flip a few positions
        on_gpu = get_method(name)(build_config(name, {"block_size": 64})).compress(W.cuda(), stats.to("cuda"))
        assert on_gpu.signs.device.type == "cuda"
        err_cpu = float((W - ref).norm())
        err_gpu = float((W - on_gpu.dequantize().cpu()).norm())
        assert err_gpu == pytest.approx(err_cpu, rel=0.05)
