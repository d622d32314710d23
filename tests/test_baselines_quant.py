"""The calibration-free hqq and the hadamard (rotation + rtn/gptq) baselines."""

import pytest
import torch

from llava_fa.formats import get_format
from llava_fa.methods import LayerStats, build_config, get_method
from llava_fa.transforms.hadamard import random_signs, rotate_hessian, rotate_weight, unrotate_weight
from llava_fa.quantizers import AffineSpec, dequantize_grouped, quantize_grouped


def _outlier_weight(m=256, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g) * 0.02
    W[torch.rand(W.shape, generator=g) < 0.005] *= 15
    return W


def _round_trip(mod):
    fresh = get_format(mod.format).from_config(mod.in_features, mod.out_features, mod.bias is not None, mod.params())
    fresh.load_state_dict(mod.state_dict())
    assert torch.equal(fresh.dequantize(), mod.dequantize()) and fresh.storage_bits() == mod.storage_bits()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hqq_beats_rtn_without_calibration(bits, one_thread):
    W = _outlier_weight()
    rtn = dequantize_grouped(*quantize_grouped(W, AffineSpec(bits, 64)))
    mod = get_method("hqq")(build_config("hqq", {"bits": bits})).compress(W, None)
    hqq = mod.dequantize()
    l1 = ((W - rtn).abs().mean().item(), (W - hqq).abs().mean().item())
    fro = ((W - rtn).norm().item(), (W - hqq).norm().item())
    print(f"{bits} bits: mean|err| rtn {l1[0]:.5f} hqq {l1[1]:.5f}; fro rtn {fro[0]:.4f} hqq {fro[1]:.4f}")
    assert l1[1] < l1[0] and fro[1] < fro[0]
    assert mod.format == "affine" and mod.storage_bits() == bits * W.numel() + (16 + bits) * W.numel() // 64
    _round_trip(mod)


def test_hadamard_rotation_is_orthogonal_and_rotates_the_hessian(one_thread):
    for n in (576, 1536, 256):
        b, d = n & -n, random_signs(n, 0).float()
        R = unrotate_weight(torch.eye(n), d, b)
        assert torch.allclose(R @ R.T, torch.eye(n), atol=1e-5)
        x = torch.randn(3, n)
        assert torch.allclose(rotate_weight(x, d, b), x @ R.T, atol=1e-5)
        assert torch.allclose(unrotate_weight(rotate_weight(x, d, b), d, b), x, atol=1e-5)
        H = torch.randn(n, 32)
        H = H @ H.T
        assert torch.allclose(rotate_hessian(H, d, b), R @ H @ R.T, atol=1e-3)


def test_hadamard_spreads_outliers_and_round_trips(one_thread):
    W = _outlier_weight(64, 256)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2048, 256, generator=g) * torch.logspace(-1, 1, 256)
    st = LayerStats(256, xtx={"text": X.T @ X}, tokens={"text": 2048, "image": 0})
    err = lambda Wh: ((X @ (W - Wh).T).norm() / (X @ W.T).norm()).item()  # noqa: E731
    res = {}
    for name, opts in (("rtn", {}), ("gptq", {}), ("hadamard", {"base": "rtn"}), ("hadamard", {})):
        mod = get_method(name)(build_config(name, {"bits": 3, **opts})).compress(W, st, torch.zeros(64))
        res[(name, opts.get("base", ""))] = err(mod.dequantize())
        if name == "hadamard":
            assert mod.storage_bits() == 3 * W.numel() + 19 * W.numel() // 64 + 256  # + one sign bit per input
            _round_trip(mod)
    print(res)
    assert res[("hadamard", "rtn")] < res[("rtn", "")]
    assert res[("hadamard", "")] < res[("gptq", "")]
    assert get_method("hadamard")(build_config("hadamard", {"base": "rtn"})).needs == frozenset()


@pytest.mark.parametrize("name", ["hqq", "hadamard"])
def test_defaults_compress_a_layer(name, one_thread):
    g = torch.Generator().manual_seed(2)
    W, X = torch.randn(64, 256, generator=g), torch.randn(512, 256, generator=g)
    st = LayerStats(256, xtx={"text": X.T @ X}, tokens={"text": 512, "image": 0})
    mod = get_method(name)().compress(W, st)
    assert ((W - mod.dequantize()).norm() / W.norm()).item() < 0.15
    x = torch.randn(4, 256)
    assert torch.allclose(mod(x), x @ mod.dequantize().T, atol=1e-4)
    _round_trip(mod)
