"""The fused `affine` kernel (Triton) against the unfused dequantization, at every bit width.

Without Triton (CI's CPU build of torch) "fused" falls back to "dequant", which the first test
checks. Where Triton is installed, the kernel itself runs on CPU through Triton's interpreter (in a
subprocess: the interpreter is chosen when the kernel module is imported), and on CUDA when there is a GPU.
"""

import importlib.util

import pytest
import torch
from triton_interpreter import run_in_triton_interpreter

from llava_fa.formats import AffineLinear
from llava_fa.quantizers import AffineSpec, quantize_grouped

HAS_TRITON = importlib.util.find_spec("triton") is not None

# (out, in, group_size, tokens): ragged tiles, in_features not a multiple of 8, one group per row,
# and group sizes that do not divide the width (a shorter last group: 100 = 3 x 32 + 4, 72 = 48 + 24)
SHAPES = [(70, 96, 32, 1), (64, 128, 128, 3), (33, 36, 12, 20), (130, 192, -1, 17), (40, 100, 32, 5),
          (24, 72, 48, 2)]


def make_layer(out_f, in_f, bits, group_size, sym, device="cpu"):
    torch.manual_seed(bits * 100 + out_f)
    w = torch.randn(out_f, in_f)
    codes, scale, zero = quantize_grouped(w, AffineSpec(bits, group_size, sym))
    layer = AffineLinear.from_codes(codes, scale, zero, bits=bits, sym=sym, bias=torch.randn(out_f),
                                    group_size=group_size)
    return layer.to(device)


def check_fused_matches_dequant(device: str, dtype: torch.dtype, atol: float) -> None:
    for bits in range(1, 9):
        for sym in (False, True) if bits > 1 else (False,):  # symmetric needs 2 bits or more
            for out_f, in_f, group_size, tokens in SHAPES:
                layer = make_layer(out_f, in_f, bits, group_size, sym, device)
                x = torch.randn(2, tokens, in_f, device=device).to(dtype)
                layer.forward_mode = "dequant"
                ref = layer(x).float()
                layer.forward_mode = "fused"
                got = layer(x).float()
                assert got.shape == ref.shape == (2, tokens, out_f)
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                assert err < atol, (bits, sym, out_f, in_f, group_size, tokens, err)


def test_fused_without_triton_is_the_dequant_path():
    layer = make_layer(24, 32, 3, 16, False)
    x = torch.randn(5, 32)
    layer.forward_mode = "fused"
    got = layer(x)
    torch.testing.assert_close(got, x @ layer.dequantize().T + layer.bias)
    assert not layer.__dict__.get("_cache")  # no dense copy kept


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (CPU build of torch)")
def test_kernel_in_the_triton_interpreter():
    run_in_triton_interpreter("import torch, test_affine_kernel as t; "
                              "t.check_fused_matches_dequant('cpu', torch.float32, 1e-5)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2), (torch.float32, 5e-3)])
def test_kernel_on_cuda(dtype, atol):
    check_fused_matches_dequant("cuda", dtype, atol)
