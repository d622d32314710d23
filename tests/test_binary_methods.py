"""The binarization family (billm, arb, arb-x, arb-rc, pb-llm) and SAB-LVLM."""

import pytest
import torch

from llava_fa.formats.binary import BinaryLinear
from llava_fa.methods import LayerStats, build_config, get_method
from llava_fa.methods.binary import (blocked_binarize, concat_parts, fit_arb, fit_mean_scale, rc_update_cols,
                                     rc_update_rows)

FAMILY = ["billm", "arb", "arb-x", "arb-rc", "pb-llm", "sab"]


def _problem(out_f=64, in_f=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    scale_t = torch.rand(in_f, generator=g) * 3
    scale_v = torch.rand(in_f, generator=g) * 3
    Xt = torch.randn(400, in_f, generator=g) * scale_t
    Xv = torch.randn(300, in_f, generator=g) * scale_v
    stats = LayerStats(in_f, xtx={"text": Xt.T @ Xt, "image": Xv.T @ Xv}, tokens={"text": 400, "image": 300})
    return W, stats, torch.cat([Xt, Xv])


def _out_err(W, Q, X):
    return float(((W - Q) @ X.T).norm() / (W @ X.T).norm())


@pytest.mark.parametrize("name", FAMILY)
def test_each_method_beats_plain_sign_binarization(name, one_thread):
    W, stats, X = _problem()
    mod = get_method(name)().compress(W, stats, torch.zeros(64))
    assert isinstance(mod, BinaryLinear) and mod.bias is not None
    D = mod.dequantize()
    assert torch.isfinite(D).all()
    plain = torch.sign(W) * W.abs().mean()  # one scale for the whole matrix
    assert float((W - D).norm()) < float((W - plain).norm())
    assert _out_err(W, D, X) < _out_err(W, plain, X)
    assert mod.storage_bits() == sum(mod.bits_breakdown().values())
    assert 1 <= mod.bpw_conventions()["codes"] < 2


def test_partial_last_block_and_driver_matches_the_stored_layer(one_thread):
    W, stats, _ = _problem(16, 200)  # 200 = 128 + 72
    cfg = build_config("arb-rc", {"block_size": 128})
    m = get_method("arb-rc")(cfg)
    parts, Q = blocked_binarize(W, stats.hessian(), m.fit_block, block_size=128)
    mod = BinaryLinear.from_parts(concat_parts(parts), block_size=128)
    assert mod.row_scales.shape[1] == 2
    assert torch.equal(mod.dequantize(), Q)  # the error feedback saw exactly what is stored
    pb = get_method("pb-llm")().compress(W, stats)
    assert pb.n_outliers == round(0.1 * 16 * 128) + round(0.1 * 16 * 72)


def test_closed_form_updates_never_increase_the_weighted_error():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 96, generator=g)
    w = torch.rand(32, 96, generator=g) ** 2 + 0.01
    B = torch.where(W >= 0, 1.0, -1.0)
    masks = torch.stack([W.abs() < 0.8, W.abs() >= 0.8])
    gid = masks[1].long()
    allc = torch.ones(96, dtype=torch.bool)

    def err(alpha, col):
        A = alpha.gather(1, gid)
        return float((w * (W - A * col[None, :] * B) ** 2).sum())

    col = torch.rand(96, generator=g) + 0.5
    alpha = torch.rand(32, 2, generator=g) + 0.1
    e = err(alpha, col)
    for _ in range(5):
        alpha = rc_update_rows(W, B, masks, col, w)
        e1 = err(alpha, col)
        col = rc_update_cols(W, B, gid, alpha, allc, w)
        e2 = err(alpha, col)
        assert e1 <= e * (1 + 1e-6) and e2 <= e1 * (1 + 1e-6)
        e = e2
    # weighted ARB: every round is at least as good as the plain mean/scale start
    m = torch.ones_like(W, dtype=torch.bool)
    werr = lambda mu, al, Bq: float((w * (W - mu[:, None] - al[:, None] * Bq) ** 2).sum())  # noqa: E731
    base = werr(*fit_mean_scale(W, m, w))
    prev = base
    for it in (1, 2, 5, 15):
        cur = werr(*fit_arb(W, m, w, it))
        assert cur <= prev * (1 + 1e-6)
        prev = cur


def test_sab_with_unit_lambda_is_arb_rc(one_thread):
    from llava_fa.methods.sab import sab_binarize

    W, stats, _ = _problem()
    rc = get_method("arb-rc")().compress(W, stats)
    cfg = build_config("sab", {"lambda_steers_selection": True})
    parts, _ = sab_binarize(W, stats.hessian(), torch.ones_like(W), cfg)
    sab = BinaryLinear.from_parts(concat_parts(parts), block_size=128)
    assert torch.equal(sab.dequantize(), rc.dequantize())
    off = get_method("sab")(build_config("sab", {"use_lambda": False})).compress(W, stats)
    assert torch.equal(off.dequantize(), rc.dequantize())
    floor1 = get_method("sab")(build_config("sab", {"lambda_floor": 1.0})).compress(W, stats)
    assert torch.equal(floor1.dequantize(), rc.dequantize())  # Lambda <= 1, so a floor of 1 turns it off
    on = get_method("sab")().compress(W, stats)
    assert not torch.equal(on.dequantize(), rc.dequantize())
    half = get_method("sab")(build_config("sab", {"lambda_floor": 0.5})).compress(W, stats)
    assert not torch.equal(half.dequantize(), on.dequantize())
    assert on.storage_bits() == rc.storage_bits() or on.n_salient != rc.n_salient


def test_sab_masks_partition_and_lambda_range():
    from llava_fa.methods.sab import hoyer, modality_masks, significance_map

    W, stats, _ = _problem(32, 128)
    cfg = build_config("sab")
    lam, info = significance_map(W, stats.hessian("text"), stats.hessian("image"), cfg)
    masks = torch.stack(info["masks"]).long()
    assert torch.equal(masks.sum(0), torch.ones_like(W, dtype=torch.long))  # a partition
    text_only, vision_only, cross, neither = info["masks"]
    assert text_only.any() and vision_only.any() and cross.any()
    assert neither.float().mean() >= 1 - 2 * cfg.salient_top_p - 1e-6
    r, rho = info["r"], info["rho"]
    assert 0 < r < 1 and float(rho.min()) >= 0 and float(rho.max()) <= 1
    assert float(lam.min()) >= min(r, 1 - r) - 1e-6 and float(lam.max()) <= max(r, 1 - r) + 1e-6
    # Hoyer with z = 2: one-hot -> 1, equal -> 0
    assert torch.allclose(hoyer(torch.tensor([[1.0, 0.0], [2.0, 2.0]])), torch.tensor([1.0, 0.0]))
    st, sv = torch.rand(8, 8), torch.rand(8, 8)
    assert torch.equal(torch.stack(modality_masks(st, sv, 0.1, 0.5)).long().sum(0), torch.ones(8, 8, dtype=torch.long))


def test_sab_needs_stats_and_checks_options():
    from llava_fa.errors import ConfigError

    with pytest.raises(ConfigError):
        get_method("sab")().compress(torch.randn(8, 16), None)
    with pytest.raises(ConfigError):
        build_config("sab", {"salient_top_p": 0})
    with pytest.raises(ConfigError):
        build_config("pb-llm", {"salient_frac": 1.5})


def test_pipeline_end_to_end(one_thread):
    import compress_fixtures as F
    from llava_fa.pipeline import compress_model, default_patterns, find_parts, select

    model = F.llava()
    names = select(model, *default_patterns(find_parts(model)))
    samples = [F.llava_inputs(seed=0), F.llava_inputs(seed=1)]
    rows = compress_model(model, get_method("sab")(build_config("sab", {"block_size": 64})), names, samples)
    assert len(rows) == len(names)
    assert all(isinstance(model.get_submodule(n), BinaryLinear) for n in names)
    with torch.no_grad():
        assert torch.isfinite(model(**samples[0]).logits).all()
