"""The fused `binary` kernel (Triton) against `x @ layer.dequantize().T`, on layers built by each method.

Without Triton (CI's CPU build of torch) or on CPU tensors "fused" is the dequant path, which the
first tests check. Where Triton is installed the kernel runs on CPU through Triton's interpreter (in
a subprocess: the interpreter is chosen when Triton is imported) in float32 and float16 (its tl.dot
gives garbage for bfloat16, so bfloat16 is checked on CUDA only), and on CUDA when there is a GPU.
"""

import importlib.util

import pytest
import torch
from triton_interpreter import run_in_triton_interpreter

from llava_fa.formats.binary import BinaryLinear
from llava_fa.methods import LayerStats, build_config, get_method

HAS_TRITON = importlib.util.find_spec("triton") is not None

# (method, options): every variant of the family and SAB; pb-llm without outliers is pure binary
METHODS = [("billm", {}), ("arb", {"iters": 3}), ("arb-x", {"iters": 3}), ("arb-rc", {"iters": 3}),
           ("arb-rc", {"iters": 3, "bitmap": False}), ("billm", {"salient": False}), ("sab", {"iters": 3}),
           ("pb-llm", {"salient_frac": 0.0})]
# (out, in, block_size): widths not a multiple of 32 nor of the block, rows not a multiple of the tile,
# one partial block only, and a block size that is no multiple of the K tile (tiles span blocks)
SHAPES = [(40, 200, 64), (24, 72, 128), (33, 150, 48)]
TOKENS = (1, 3, 16)


def make_layer(name: str, opts: dict, out_f: int, in_f: int, block_size: int, seed: int = 0) -> BinaryLinear:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    Xt = torch.randn(300, in_f, generator=g) * (torch.rand(in_f, generator=g) * 3)
    Xv = torch.randn(200, in_f, generator=g) * (torch.rand(in_f, generator=g) * 3)
    stats = LayerStats(in_f, xtx={"text": Xt.T @ Xt, "image": Xv.T @ Xv}, tokens={"text": 300, "image": 200})
    cfg = build_config(name, {"block_size": block_size, **opts})
    return get_method(name)(cfg).compress(W, stats, torch.randn(out_f, generator=g))


def _err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref).abs().max() / ref.abs().max()).item()


def check_kernel_matches_dequant(device: str, dtypes: dict) -> None:
    """dtypes: {dtype: relative tolerance}. Every method x shape x token count, default tiles and a K split."""
    from llava_fa.kernels import binary_matmul as bm

    torch.set_num_threads(1)
    cases = [(m, SHAPES[(i + j) % len(SHAPES)]) for i, m in enumerate(METHODS) for j in range(2)]  # 2 shapes each
    for (name, opts), (out_f, in_f, bs) in cases:
        layer = make_layer(name, opts, out_f, in_f, bs).to(device)
        assert bm.supports(layer)
        layer.forward_mode = "fused"
        dense = layer.dequantize().to(device)
        for tokens in TOKENS:
            x32 = torch.randn(tokens, in_f, device=device)
            for dtype, tol in dtypes.items():
                x = x32.to(dtype)
                ref = x.float() @ dense.T + layer.bias.to(dtype).float()
                got = layer(x)
                assert got.dtype == dtype and got.shape == ref.shape
                assert _err(got, ref) < tol, (name, opts, out_f, in_f, bs, tokens, dtype, _err(got, ref))
        split = bm.binary_matmul(x32[None], bm.layout_for(layer), layer.bias, blocks=(16, 16, 32, 3))
        assert split.shape == (1, TOKENS[-1], out_f)
        split_tol = dtypes.get(torch.float32, 1e-5)  # float32 dots run in TF32 on a GPU
        assert _err(split[0], x32 @ dense.T + layer.bias) < split_tol, (name, opts, out_f, in_f, bs, "split-K")


def test_fused_on_cpu_is_the_dequant_path():
    layer = make_layer("billm", {}, 24, 72, 64)
    x = torch.randn(5, 72)
    layer.forward_mode = "fused"
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + layer.bias)
    assert not layer.__dict__.get("_cache") and not layer.__dict__.get("_kernel")  # nothing dense, no layout


def test_pb_llm_outliers_fall_back_to_dequant():
    from llava_fa.kernels import binary_matmul as bm

    layer = make_layer("pb-llm", {}, 24, 72, 64)
    assert layer.n_outliers > 0 and not bm.supports(layer)
    assert not BinaryLinear.backends["fused"][0].runs(layer, torch.randn(2, 72))
    layer.forward_mode = "fused"
    x = torch.randn(2, 72)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + layer.bias)


def test_layout_is_runtime_only_and_small():
    from llava_fa.kernels import binary_matmul as bm

    layer = make_layer("arb-rc", {"iters": 2}, 40, 200, 64)
    keys = set(layer.state_dict())
    lay = bm.layout_for(layer)
    assert bm.layout_for(layer) is lay and set(layer.state_dict()) == keys  # cached, not persistent
    # signs and one merged plane, 32 columns a word; the float16 tables are the stored buffers
    assert lay.signs.shape == lay.plane2.shape == (40, 7) and lay.signs.dtype == torch.int32
    assert lay.row_scales.data_ptr() == layer.row_scales.data_ptr()
    assert lay.nbytes() < layer.storage_bits() // 8 + 40 * 7 * 4
    layer.to(torch.float16)
    assert not layer.__dict__.get("_kernel")  # .to() drops it
    # the planes decode back to the stored bits: bitmap at non-salient columns, residual signs at salient
    lay = bm.build_layout(layer)
    bits = lambda w: ((w[..., None] >> torch.arange(32)) & 1).flatten(-2)[..., :200].bool()  # noqa: E731
    p = layer.parts()
    assert torch.equal(bits(lay.signs), p.signs)
    assert torch.equal(bits(lay.plane2), torch.where(p.salient, p.res_signs_full, p.bitmap))


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (CPU build of torch)")
def test_kernel_in_the_triton_interpreter():
    run_in_triton_interpreter("import torch, test_binary_kernel as t; "
                              "t.check_kernel_matches_dequant('cpu', {torch.float32: 1e-5, torch.float16: 5e-3})")


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and Triton")
def test_kernel_on_cuda_small_layers():
    check_kernel_matches_dequant("cuda", {torch.float16: 5e-3, torch.bfloat16: 2e-2, torch.float32: 5e-3})


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("opts", [dict(col=False), dict(means=False)])  # BiLLM / ARB layout, ARB-RC / SAB layout
def test_kernel_on_cuda_4096(dtype, tol, opts):
    from test_binary_format import _parts

    from llava_fa.kernels import binary_matmul as bm

    p = _parts(4096, 4096, 128, **opts)
    layer = BinaryLinear.from_parts(p, block_size=128, bias=torch.randn(4096)).cuda()
    dense = layer.dequantize().cuda()
    for tokens in (1, 16):
        x = torch.randn(tokens, 4096, device="cuda", dtype=dtype)
        ref = x.float() @ dense.T + layer.bias.to(dtype).float()
        assert _err(bm.layer_matmul(layer, x), ref) < tol
        layer.forward_mode = "auto"
        assert _err(layer(x), ref) < tol
