"""The default forward mode "auto": compressed in GPU memory (a format's kernel, else the weight
rebuilt per call), the dense weight cached on CPU. Every format's "auto" equals its dequantized reference."""

from __future__ import annotations

import pytest
import torch

from llava_fa.formats import AffineLinear, get_format
from llava_fa.formats.base import DEFAULT_MODE
from llava_fa.quantizers import AffineSpec, quantize_grouped


def affine_layer(device="cpu"):
    torch.manual_seed(0)
    codes, scale, zero = quantize_grouped(torch.randn(48, 100), AffineSpec(4, 32, False))
    return AffineLinear.from_codes(codes, scale, zero, bits=4, sym=False, group_size=32).to(device)


def test_auto_is_the_default_and_every_format_has_it():
    assert DEFAULT_MODE == "auto" and "forward_mode" not in vars(affine_layer())
    for name in ("affine", "hadamard", "fourier", "binary", "lowrank"):
        assert "auto" in get_format(name).backends, name
    # the hadamard format's codes are of the rotated weight: no affine kernel may run them as they are
    assert "fused" not in get_format("hadamard").backends


def test_auto_caches_on_cpu():
    layer = affine_layer()
    x = torch.randn(3, 100)
    y = layer(x)
    torch.testing.assert_close(y, x @ layer.dequantize().T)
    assert layer.__dict__.get("_cache")  # CPU: the dense copy is kept


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_keeps_the_model_compressed_on_cuda():
    layer = affine_layer("cuda")
    x = torch.randn(3, 100, device="cuda", dtype=torch.float16)
    y = layer(x)
    torch.testing.assert_close(y.float(), (x.float() @ layer.dequantize().T), atol=2e-2, rtol=2e-2)
    assert not layer.__dict__.get("_cache")  # no dense copy stays on the GPU
