"""CUDA paths (skipped without a GPU; CI has none, so these run in the GPU sessions):
every registered method compresses on the GPU, and `llava-fa bench` runs end to end there."""

import pytest
import torch

from llava_fa.methods.base import LayerStats, available_methods, build_config, get_method

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _layer(device, out_f=64, in_f=256, tokens=512):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_f, in_f, generator=g) * 0.02
    x = torch.randn(tokens, in_f, generator=g)
    xi, xt = x[: tokens // 4], x[tokens // 4:]
    stats = LayerStats(in_f, xtx={"text": xt.T @ xt, "image": xi.T @ xi},
                       sq={"text": (xt * xt).sum(0), "image": (xi * xi).sum(0)},
                       tokens={"text": len(xt), "image": len(xi)})
    return w.to(device), stats.to(device)


def _small_options(name: str) -> dict:
    # ranks that fit a 64 x 256 layer; everything else at the method's defaults
    return {"lqer": {"rank": 8}, "caldera": {"rank": 8, "iters": 3}, "asvd": {"rank": 8},
            "svd-llm": {"rank": 8}}.get(name, {})


@pytest.mark.parametrize("name", available_methods())
def test_every_method_compresses_on_cuda_like_on_cpu(name):
    errs = {}
    for device in ("cpu", "cuda"):
        w, stats = _layer(device)
        layer = get_method(name)(build_config(name, _small_options(name))).compress(w, stats)
        d = layer.to(device).dequantize(torch.float32)
        assert d.device.type == device and torch.isfinite(d).all()
        errs[device] = ((d - w).norm() / w.norm()).item()
        x = torch.randn(3, w.shape[1], device=device)
        torch.testing.assert_close(layer(x), x @ d.T, rtol=1e-3, atol=1e-4)
    # same algorithm, different kernels: the errors agree closely (not bit for bit)
    assert errs["cuda"] == pytest.approx(errs["cpu"], rel=0.05, abs=1e-3)


@pytest.mark.parametrize("name", available_methods())
def test_every_method_stores_the_same_tensors_twice_on_cuda(name):
    """The pipeline compresses under `reproducible`: no sum in the order of CUDA's atomics (fa's
    index_add did, before). A layer large enough for the atomics to race."""
    from llava_fa.pipeline.devices import reproducible

    w, stats = _layer("cuda", out_f=1024, in_f=2048, tokens=4096)
    states = []
    with reproducible(torch.device("cuda")):
        for _ in range(2):
            layer = get_method(name)(build_config(name, _small_options(name))).compress(w.clone(), stats)
            states.append(layer.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_bench_runs_on_cuda(tmp_path):
    import compress_fixtures as F
    from llava_fa import bench

    model = F.save_llama_dir(tmp_path / "llama")
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(" ".join(f"word{(i * 7 + j) % 50} and more" for j in range(8)) for i in range(40)))
    runs = tmp_path / "runs.yaml"
    runs.write_text("- {name: gptq4, method: gptq, options: {bits: 4, group_size: 32}, nsamples: 4, calib: builtin}\n")
    (rec,) = bench.run_bench(model, bench.load_runs(runs), tmp_path / "records", device="cuda", ppl_windows=2,
                             seqlen=64, text_source=str(text), on_info=lambda msg: None)
    assert rec["device"] == "cuda" and rec["peak_memory_mib"] > 0 and rec["perplexity"] > 0
