"""The `fourier` format's Triton kernel (forward mode `fused`) against the dequantized weight.

Without Triton (CI's CPU build of torch) `fused` falls back to the spectral reference path, which
the first test checks. Where Triton is installed the kernel runs on CPU through Triton's interpreter
(in a subprocess: the interpreter is chosen when the kernel module is imported), and on CUDA when
there is a GPU.
"""

import importlib.util

import pytest
import torch
from triton_interpreter import run_in_triton_interpreter

from llava_fa.errors import ConfigError
from llava_fa.formats.fourier import FourierLinear
from llava_fa.methods.fa import fit_layer

HAS_TRITON = importlib.util.find_spec("triton") is not None

# (m, n, params): both transforms, odd and even widths (a Nyquist column or not), odd heights (rfft2's
# self-conjugate columns), groups that do not divide a row, one group per row, Lloyd levels,
# low-rank parts at 16 and 8 bits, ODC scales on both sides, 2+2 to 4+4 bits (every packed word shape).
CASES = [
    (40, 70, dict(transform="rfft", rank=0, group_size=16)),
    (33, 64, dict(transform="rfft", rank=3, lr_bits=8, group_size=32, levels="lloyd", row_scales=True)),
    (24, 45, dict(transform="rfft", rank=2, lr_bits=16, group_size=-1, mag_bits=2, phase_bits=2)),
    (24, 20, dict(transform="rfft2", rank=3, lr_bits=8, group_size=16, row_scales=True)),
    (17, 13, dict(transform="rfft2", rank=0, group_size=4, levels="lloyd", mag_bits=4, phase_bits=4)),
    (65, 96, dict(transform="rfft2", rank=0, group_size=-1)),
    (31, 50, dict(transform="rfft", rank=0, group_size=32, mag_bits=2, phase_bits=3)),  # 5-bit codes: 64-bit words
    (26, 48, dict(transform="rfft", rank=0, group_size=16, row_scales=True)),  # ODC rows, rows not in fours (the Triton gemv)
    (20, 36, dict(transform="rfft2", rank=0, group_size=8, mag_bits=3, phase_bits=4)),  # 7-bit codes
]


def make_layer(m: int, n: int, params: dict, device: str = "cpu") -> FourierLinear:
    g = torch.Generator().manual_seed(m * n)
    W = torch.randn(m, n, generator=g) * 0.02
    W[:, 1] *= 8  # an outlier input channel, as in LLM weights
    p = {"transform": "rfft", "rank": 0, "lr_bits": 8, "codes": True, "quantizer": "polar", "mag_bits": 3,
         "phase_bits": 3, "real_bits": 3, "group_size": 16, "levels": "uniform", "col_scales": True,
         "row_scales": False, **params}
    cols = torch.rand(n, generator=g).add(0.5).half().float()
    rows = torch.rand(m, generator=g).add(0.5).half().float() if p["row_scales"] else None
    return fit_layer(W, p, cols, rows, iters=2, bias=torch.randn(m, generator=g)).layer.to(device)


def check_fused_matches_dequant(device: str, dtype: torch.dtype, tol: float) -> None:
    for m, n, params in CASES:
        layer = make_layer(m, n, params, device)
        for lead in ((1,), (2, 5), (20,)):  # one row (the decode kernel), a few, many (split-K off)
            x = torch.randn(*lead, n, device=device).to(dtype)
            ref = (x.float() @ layer.dequantize().T + layer.bias.float())
            layer.forward_mode = "fused"
            got = layer(x).float()
            assert got.shape == ref.shape == (*lead, m)
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            assert err < tol, (m, n, params, lead, err)
            assert layer.__dict__["_kernel"], "the fused path did not run the kernel"


def test_fused_without_triton_is_the_spectral_path(monkeypatch):
    from llava_fa.kernels import triton_support

    monkeypatch.setattr(triton_support, "triton", None)
    layer = make_layer(*CASES[1][:2], CASES[1][2])
    x = torch.randn(5, CASES[1][1])
    layer.forward_mode = "fused"
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + layer.bias, rtol=1e-4, atol=1e-4)
    assert not layer.__dict__.get("_kernel") and not layer.__dict__.get("_cache")  # nothing dense kept


def test_unsupported_forms_keep_their_backends():
    from llava_fa.formats import fourier_runtime

    cart = make_layer(16, 24, dict(quantizer="cartesian", group_size=8))
    assert not fourier_runtime.supported(cart)
    assert fourier_runtime.supported(make_layer(16, 24, dict(transform="rfft2")))


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (CPU build of torch)")
def test_kernel_in_the_triton_interpreter():
    run_in_triton_interpreter("import torch, test_fourier_kernel as t; "
                              "t.check_fused_matches_dequant('cpu', torch.float32, 2e-3)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gemv", ["cuda", "triton"])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 3e-2), (torch.float32, 5e-3)])
def test_kernel_on_cuda(dtype, tol, gemv, monkeypatch):
    monkeypatch.setenv("LLAVA_FA_FOURIER_GEMV", gemv)  # which batch-1 kernel (formats/fourier_runtime.SWITCHES)
    check_fused_matches_dequant("cuda", dtype, tol)


def check_tall_weight_tiles_match(device: str) -> None:
    """The 256 x 64 tiles batch 1 takes on tall weights (default_blocks, m >= 8192) give the same Z as
    the default tiles, on a small layer (tiles larger than the weight, a K split of 4)."""
    from llava_fa.formats import fourier_runtime
    from llava_fa.kernels import fourier_matmul as km

    layer = make_layer(40, 300, dict(transform="rfft", rank=0, group_size=64), device)
    rt = fourier_runtime.kernel_layout(layer, torch.device(device))
    spec = torch.fft.rfft(torch.randn(1, 300, device=device), dim=-1)
    ref = km.fourier_matmul(spec, rt, torch.float32)
    got = km.fourier_matmul(spec, rt, torch.float32, km.Blocks(1, 256, 64, 4))
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (CPU build of torch)")
def test_tall_weight_tiles_in_the_triton_interpreter():
    run_in_triton_interpreter("import test_fourier_kernel as t; t.check_tall_weight_tiles_match('cpu')")


def check_dense_prefill_matches(device: str, tol: float = 1e-4) -> None:
    """The prefill as one GEMM on the decoded spectrum (kernels/fourier_dense.py) gives fourier_matmul's Z
    on every rfft case at 20 tokens (the same float16 code pairs; float32 here: exact in the interpreter,
    TF32 in the tiles' dot on a GPU), and refuses rfft2."""
    from llava_fa.formats import fourier_runtime
    from llava_fa.kernels import fourier_dense as kd
    from llava_fa.kernels import fourier_matmul as km

    for m, n, params in [c for c in CASES if c[2]["transform"] == "rfft"]:
        layer = make_layer(m, n, params, device)
        rt = fourier_runtime.kernel_layout(layer, torch.device(device))
        spec = torch.fft.rfft(torch.randn(20, n, device=device), dim=-1)
        ref = km.fourier_matmul(spec, rt, torch.float32)
        got = kd.fourier_dense_matmul(spec, rt, torch.float32)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= tol * ref.abs().max(), (m, n, params)
    rfft2 = make_layer(*CASES[3][:2], CASES[3][2], device)
    assert not kd.runs(fourier_runtime.kernel_layout(rfft2, torch.device(device)))


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (CPU build of torch)")
def test_dense_prefill_in_the_triton_interpreter():
    run_in_triton_interpreter("import test_fourier_kernel as t; t.check_dense_prefill_matches('cpu')")


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and Triton")
def test_dense_prefill_on_cuda():
    check_dense_prefill_matches("cuda", 2e-3)


def test_switches_refuse_unknown_values(monkeypatch):
    from llava_fa.formats import fourier_runtime

    monkeypatch.setenv("LLAVA_FA_FOURIER_GEMV", "fast")
    with pytest.raises(ConfigError, match="LLAVA_FA_FOURIER_GEMV must be one of cuda, triton"):
        fourier_runtime.switch("LLAVA_FA_FOURIER_GEMV")


def test_sibling_layers_share_the_activation_spectrum():
    """q/k/v-like layers with equal input scales take one rfft of their shared input (kept on the input
    tensor); other scales, an in-place change of the input, or another input compute it again."""
    from llava_fa.formats import fourier_runtime as fr

    plain = [fr.build(make_layer(24, 40, dict(col_scales=False)), torch.device("cpu")) for _ in range(2)]
    scaled = fr.build(make_layer(24, 40, dict(col_scales=True)), torch.device("cpu"))
    x = torch.randn(3, 40)
    first = fr.activation_spectrum(x, plain[0])
    assert fr.activation_spectrum(x, plain[1]) is first  # equal scales: the same spectrum, not recomputed
    other = fr.activation_spectrum(x, scaled)
    assert other is not first and torch.allclose(other, torch.fft.rfft(x / scaled.in_scale, dim=-1))
    x.mul_(2)  # in place: the version counter moves, the spectrum is computed again
    again = fr.activation_spectrum(x, plain[1])
    assert again is not first and torch.allclose(again, torch.fft.rfft(x / plain[1].in_scale, dim=-1))
    assert fr.activation_spectrum(x.clone(), plain[0]) is not again  # another tensor: its own
    with torch.inference_mode():  # no version counter there: shared as well
        y = torch.randn(1, 40)
        assert fr.activation_spectrum(y, plain[0]) is fr.activation_spectrum(y, plain[1])
    long = torch.randn(fr.PREFILL_TOKENS, 40)  # a prefill: nothing kept
    assert fr.activation_spectrum(long, plain[0]) is not fr.activation_spectrum(long, plain[1])
