"""The `lowrank` format and the low-rank baselines: asvd, svd-llm, lqer, caldera."""

import pytest
import torch

from llava_fa.formats import get_format
from llava_fa.formats.budget import largest_rank_within
from llava_fa.formats.lowrank import LowRankLinear, layout_bits, max_rank_for_bits, split_svd
from llava_fa.methods import LayerStats, build_config, get_method


def _data(m=64, n=256, N=2048, seed=0):
    """A weight and anisotropic, correlated inputs (channel scales spread over two decades)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, n, generator=g) * torch.logspace(-1, 1, n)[torch.randperm(n, generator=g)]
    X = X @ (torch.eye(n) + 0.1 * torch.randn(n, n, generator=g))
    W = torch.randn(m, n, generator=g)
    st = LayerStats(n, xtx={"text": X.T @ X}, sq={"text": (X * X).sum(0)}, tokens={"text": N, "image": 0})
    return W, X, st


def _err(W, W_hat, X):
    return ((X @ (W - W_hat).T).norm() / (X @ W.T).norm()).item()


def _compress(name, W, st, **opts):
    return get_method(name)(build_config(name, opts)).compress(W, st)


def _round_trip(mod):
    fresh = get_format(mod.format).from_config(mod.in_features, mod.out_features, mod.bias is not None, mod.params())
    fresh.load_state_dict(mod.state_dict())
    assert torch.equal(fresh.dequantize(), mod.dequantize())
    assert fresh.storage_bits() == mod.storage_bits()
    return fresh


@pytest.mark.parametrize("shape", [(48, 160), (160, 48), (40, 40)])
def test_split_svd_is_the_best_rank_r_approximation(shape, one_thread):
    """The Gram-matrix route gives what a full SVD's truncation gives (Eckart-Young), wide or tall,
    with singular values spread over four decades; zero directions give zero factors, not NaN."""
    g = torch.Generator().manual_seed(0)
    M = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.logspace(0, -4, shape[1], dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    for r in (1, 7, min(shape)):
        A, B, S_all = split_svd(M, r)
        best = (U[:, :r] * S[:r]) @ Vh[:r]
        assert torch.allclose(A.double() @ B.double(), best, atol=1e-6 * S[0].item())
        assert torch.allclose(S_all.double(), S, rtol=1e-5, atol=1e-9)
    Z = torch.zeros(6, 9)
    Z[0, 0] = 2.0
    A, B, S_all = split_svd(Z, 3)
    assert torch.isfinite(A).all() and torch.isfinite(B).all()
    assert torch.allclose(A @ B, Z, atol=1e-6) and torch.allclose(S_all, torch.tensor([2.0, 0, 0, 0, 0, 0]))


def test_lowrank_format_round_trip_and_bits(one_thread):
    m, n, r = 64, 256, 8
    g = torch.Generator().manual_seed(1)
    W = torch.randn(m, n, generator=g)
    from llava_fa.quantizers import AffineSpec, quantize_grouped
    base = quantize_grouped(W, AffineSpec(3, 64))
    A, B, s = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g), torch.rand(n, generator=g) + 0.5
    for lr_bits in (16, 8, 4):
        mod = LowRankLinear.build(m, n, A=A, B=B, base=base, base_bits=3, lr_bits=lr_bits, col_scale=s,
                                  bias=torch.randn(m))
        _round_trip(mod)
        # bits counted by hand: base codes + scales + zeros, factors, scale vector
        want = 3 * m * n + 16 * m * n // 64 + 3 * m * n // 64 + 16 * n
        want += 16 * r * (m + n) if lr_bits == 16 else lr_bits * r * (m + n) + (16 + lr_bits) * r * (m + n) // 64
        assert mod.storage_bits() == want == layout_bits(m, n, mod.params())
        tol = {16: 1e-2, 8: 0.1, 4: 1.0}[lr_bits]
        assert (mod.dequantize() - (mod.base_weight() + A @ B / s)).abs().max() < tol * (A @ B / s).abs().max()
    # no base, rank 0 edge and the bpw -> rank search
    assert LowRankLinear(n, m, rank=0).storage_bits() == 0
    r = max_rank_for_bits(m, n, 4 * m * n, lr_bits=16)
    assert r == 4 * m * n // (16 * (m + n))


def test_largest_rank_within_is_the_last_rank_that_fits():
    """The one bit-budget search (lowrank's max_rank_for_bits and fa's bpw planner): brute force agrees."""
    for base, per_rank, budget, top in ((10, 3, 40, 50), (10, 3, 9, 50), (0, 7, 7 * 50, 50), (5, 2, 5, 0)):
        fits = [r for r in range(top + 1) if base + per_rank * r <= budget]
        assert largest_rank_within(lambda r: base + per_rank * r, budget, top) == (max(fits) if fits else 0)


def test_asvd_beats_plain_svd_and_svd_llm_beats_both(one_thread):
    W, X, st = _data()
    for r in (8, 32):
        svd = _compress("asvd", W, st, rank=r, alpha=0.0).dequantize()
        asvd = _compress("asvd", W, st, rank=r).dequantize()
        svdllm = _compress("svd-llm", W, st, rank=r).dequantize()
        e_svd, e_asvd, e_llm = _err(W, svd, X), _err(W, asvd, X), _err(W, svdllm, X)
        print(f"rank {r}: svd {e_svd:.4f} asvd {e_asvd:.4f} svd-llm {e_llm:.4f}")
        assert e_asvd < e_svd
        assert e_llm <= e_asvd and e_llm <= e_svd


def test_asvd_store_scale_and_bpw_target(one_thread):
    W, X, st = _data()
    folded = _compress("asvd", W, st, rank=16)
    stored = _compress("asvd", W, st, rank=16, store_scale=True)
    assert "col_scale" in stored.stored_tensors() and "col_scale" not in folded.stored_tensors()
    assert abs(_err(W, folded.dequantize(), X) - _err(W, stored.dequantize(), X)) < 1e-3
    _round_trip(stored)
    for bpw in (2.0, 4.0, 6.5):
        mod = _compress("svd-llm", W, st, bpw=bpw)
        assert mod.bits_per_weight() <= bpw
        assert mod.storage_bits() == 16 * mod.params()["rank"] * (64 + 256)


def test_lqer_lowrank_term_helps(one_thread):
    W, X, st = _data()
    q_only = _err(W, _compress("lqer", W, st, rank=0).dequantize(), X)
    mod = _compress("lqer", W, st)  # rank 32, factors 8-bit
    l2qer = _err(W, mod.dequantize(), X)
    plain = _err(W, get_method("lqer")().compress(W, None).dequantize(), X)  # no activation scale
    print(f"lqer: Q alone {q_only:.4f}, LQER {plain:.4f}, L2QER {l2qer:.4f}")
    assert l2qer < plain < q_only
    m, n, r = 64, 256, 32
    assert mod.storage_bits() == (4 * m * n + 20 * m * n // 64) + 8 * r * (m + n) + 24 * r * (m + n) // 64


def test_caldera_beats_its_quantized_part(one_thread):
    W, X, st = _data()
    g = torch.Generator().manual_seed(3)
    W = torch.randn(64, 8, generator=g) @ torch.randn(8, 256, generator=g) / 2 + 0.3 * torch.randn(64, 256, generator=g)
    gptq2 = _err(W, _compress("gptq", W, st, bits=2).dequantize(), X)
    mod = _compress("caldera", W, st, rank=16)
    cal = _err(W, mod.dequantize(), X)
    print(f"caldera rank 16: {cal:.4f} vs gptq 2-bit {gptq2:.4f}, bpw {mod.bits_per_weight():.3f}")
    assert cal < gptq2
    m, n, r = 64, 256, 16
    assert mod.storage_bits() == (2 * m * n + 18 * m * n // 64) + 4 * r * (m + n) + 20 * r * (m + n) // 64


def test_caldera_factors_its_hessian_once_for_every_gptq_step(one_thread, monkeypatch):
    import llava_fa.methods.caldera as cm
    from llava_fa.quantizers import hessian

    calls = {"gptq": 0, "factor": 0}
    gptq, factor = cm.gptq_quantize, hessian.upper_cholesky_of_inverse
    monkeypatch.setattr(cm, "gptq_quantize", lambda *a, **k: calls.__setitem__("gptq", calls["gptq"] + 1) or gptq(*a, **k))
    monkeypatch.setattr(hessian, "upper_cholesky_of_inverse",
                        lambda *a, **k: calls.__setitem__("factor", calls["factor"] + 1) or factor(*a, **k))
    W, X, st = _data()
    cm.caldera(W, st.hessian("all"), cm.CALDERAConfig(rank=8))
    assert calls["gptq"] >= 2 and calls["factor"] == 1, calls
    with pytest.raises(ValueError, match="act_order"):
        hessian.prepare_hessian(W, st.hessian("all"), 0.01, act_order=True, hinv_chol=torch.eye(W.shape[1]))


@pytest.mark.parametrize("name", ["asvd", "svd-llm", "lqer", "caldera"])
def test_defaults_compress_a_layer(name, one_thread):
    W, X, st = _data()
    bias = torch.randn(64)
    mod = get_method(name)().compress(W, st, bias)
    assert mod.format == "lowrank" and torch.equal(mod.bias, bias)
    x = torch.randn(5, 256)
    assert torch.allclose(mod(x), x @ mod.dequantize().T + bias, atol=1e-4)
    assert mod.bits_per_weight() == mod.storage_bits() / (64 * 256)
    assert _err(W, mod.dequantize(), X) < 1.0
    _round_trip(mod)
