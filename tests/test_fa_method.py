"""The `fa` method: options, ODC, the alternation, rank/bits budgets, and a real testbed weight."""

import math

import pytest
import torch

from llava_fa.errors import ConfigError
from llava_fa.formats.fourier import FourierLinear
from llava_fa.methods import LayerStats, available_methods, build_config, get_method
from llava_fa.methods.fa import column_scales, fit_layer, plan_layer


pytestmark = pytest.mark.usefixtures("one_thread")


def _weight(m=48, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a decaying spectrum plus noise plus outlier channels: something for both the low rank and the codes
    W = (torch.randn(m, 6, generator=g) * torch.linspace(1, 0.2, 6)) @ torch.randn(6, n, generator=g) * 0.05
    W += torch.randn(m, n, generator=g) * 0.02
    W[:, 3] *= 6
    return W


def _compress(W, stats=None, **opts):
    return get_method("fa")(build_config("fa", opts)).compress(W, stats)


def _rel(W, layer):
    return ((W - layer.dequantize()).norm() / W.norm()).item()


def test_registered_and_needs():
    assert "fa" in available_methods()
    FA = get_method("fa")
    assert FA.needs == frozenset() and FA(build_config("fa", {})).needs == frozenset()
    assert FA(build_config("fa", {"odc": "calibrated"})).needs == {"sq"}


@pytest.mark.parametrize("opts,match", [
    ({"lr_bits": 6}, "16, 8 or 4"),
    ({"mag_bits": 0}, "mag-bits"),
    ({"quantizer": "cartesian", "mag_bits": 3, "phase_bits": 2}, "must be even"),
    ({"transform": "none", "quantizer": "cartesian"}, "only applies to complex"),
    ({"rank": 4, "rank_fraction": 0.1}, "not both"),
    ({"bpw": 3.0, "rank": 4}, "chooses the rank"),
    ({"structure": "quant", "rank": 4}, "no low-rank part"),
    ({"structure": "lowrank", "rank": 0}, "rank > 0"),
    ({"odc_rows": True, "odc": "off"}, "odc-rows"),
    ({"iters": 0}, "iters"),
    ({"transform": "dct"}, "one of rfft2, rfft, fft2, none"),
])
def test_config_rejects_impossible_combinations(opts, match):
    with pytest.raises(ConfigError, match=match):
        build_config("fa", opts)


def test_calibrated_odc_needs_and_uses_statistics():
    W = _weight()
    with pytest.raises(ConfigError, match="calibration data"):
        _compress(W, None, odc="calibrated")
    x = torch.randn(256, 40) * torch.linspace(0.1, 3, 40)
    stats = LayerStats(40, sq={"text": (x * x).sum(0), "image": torch.zeros(40)}, tokens={"text": 256, "image": 0})
    c = column_scales(W, "calibrated", 0.5, stats)
    expected = (x * x).mean(0) ** 0.25
    torch.testing.assert_close(c, (expected / expected.log().mean().exp()).half().float(), rtol=2e-3, atol=0)
    layer = _compress(W, stats, odc="calibrated", rank=2)
    # the fit is weighted by c: the kept error is ||(W - W_hat) diag(c)||
    weighted = ((W - layer.dequantize()) * c).norm().item()
    assert weighted == pytest.approx(min(layer.fit_history), rel=1e-4)


def test_high_bits_round_trip():
    W = _weight()
    # full rank, float16 factors: only float16 rounding is left
    lr = _compress(W, structure="lowrank", rank=40, lr_bits=16)
    assert _rel(W, lr) < 1e-3
    # joint at 8+8 bits: the codes correct the float16 factors further
    assert _rel(W, _compress(W, rank=40, lr_bits=16, mag_bits=8, phase_bits=8)) < 1e-3
    # codes alone at 8+8 bits: limited by the 8-bit phase grid (a step of 2pi/256 ~ 0.7% of |z|)
    for t in ("rfft2", "rfft", "fft2", "none"):
        assert _rel(W, _compress(W, transform=t, structure="quant", mag_bits=8, phase_bits=8)) < 1e-2, t


@pytest.mark.parametrize("transform", ["rfft2", "rfft", "none"])
def test_error_falls_with_bits_and_rank(transform):
    W = _weight(seed=1)
    by_bits = [_rel(W, _compress(W, transform=transform, structure="quant", mag_bits=b, phase_bits=b, odc="off"))
               for b in (1, 2, 3, 4, 6)]
    assert all(a > b for a, b in zip(by_bits, by_bits[1:])), by_bits
    by_rank = [_rel(W, _compress(W, transform=transform, rank=r, mag_bits=2, phase_bits=2, lr_bits=16, iters=3))
               for r in (0, 2, 6, 12)]
    assert all(a > b for a, b in zip(by_rank, by_rank[1:])), by_rank


@pytest.mark.parametrize("transform,quantizer", [("rfft2", "polar"), ("rfft2", "cartesian"), ("rfft", "polar"),
                                                 ("none", "polar")])
def test_alternation_keeps_the_best_iterate(transform, quantizer):
    W = _weight(seed=2)
    layer = _compress(W, transform=transform, quantizer=quantizer, rank=4, mag_bits=2, phase_bits=2, iters=6,
                      odc="data-free", odc_rows=True)
    hist = layer.fit_history
    assert len(hist) == 6 and min(hist) <= hist[0]
    c, r = layer.odc_scales()
    kept = ((W - layer.dequantize()) * c[None, :] * r[:, None]).norm().item()  # the stored layer's weighted error
    assert kept == pytest.approx(min(hist), rel=1e-5)


def test_bpw_target_picks_the_largest_rank_that_fits():
    m, n = 48, 40
    cfg = build_config("fa", {"structure": "joint", "bpw": 5.0, "mag_bits": 3, "phase_bits": 3})
    p = plan_layer(cfg, m, n)
    assert p["rank"] > 0 and (p["mag_bits"], p["phase_bits"]) == (3, 3)
    assert FourierLinear(n, m, **p).bits_per_weight() <= 5.0
    assert FourierLinear(n, m, **{**p, "rank": p["rank"] + 1}).bits_per_weight() > 5.0
    # too tight for 3+3 bits: the bits come down (magnitude first), rank 0
    low = plan_layer(build_config("fa", {"bpw": 2.3, "mag_bits": 3, "phase_bits": 3}), m, n)
    assert FourierLinear(n, m, **low).bits_per_weight() <= 2.3 and low["mag_bits"] + low["phase_bits"] < 6
    with pytest.raises(ConfigError, match="below what 1-bit codes cost"):
        plan_layer(build_config("fa", {"bpw": 0.5}), m, n)
    with pytest.raises(ConfigError, match="rank-1"):
        plan_layer(build_config("fa", {"bpw": 0.01, "structure": "lowrank"}), m, n)
    layer = _compress(_weight(), bpw=3.0)
    assert layer.bits_per_weight() <= 3.0 and layer.params()["rank"] == 0  # the default structure: codes only


def test_real_testbed_weight(testbed_dir):
    from safetensors import safe_open

    path = testbed_dir / "model.safetensors"

    with safe_open(str(path), "pt") as f:
        W = f.get_tensor("language_model.model.layers.10.self_attn.q_proj.weight").float()[:, :]
    assert W.shape == (576, 576)
    res = fit_layer(W, plan_layer(build_config("fa", {"rank": 8, "mag_bits": 2, "phase_bits": 2, "odc": "off"}),
                                          576, 576),
                    iters=3)
    hist = res.history
    assert min(hist) <= hist[0] and res.best == hist.index(min(hist))
    kept = (W - res.layer.dequantize()).norm().item()  # odc off here: the weighted error is the plain one
    assert kept == pytest.approx(min(hist), rel=1e-5)
    assert math.isfinite(kept) and kept / W.norm().item() < 0.5


def test_levels_only_reach_polar_spectra():
    assert plan_layer(build_config("fa", {}), 48, 40)["levels"] == "lloyd"
    for opts in ({"transform": "none"}, {"quantizer": "cartesian"}):
        assert plan_layer(build_config("fa", opts), 48, 40)["levels"] == "uniform"


def test_yaml_off_reads_as_the_off_option():
    """YAML 1.1 turns a bare `off` into False; a Literal option that has "off" takes it back."""
    import yaml

    opts = yaml.safe_load("{odc: off, structure: quant}")
    assert opts["odc"] is False and build_config("fa", opts).odc == "off"
    with pytest.raises(ConfigError, match="must be one of"):
        build_config("fa", {"structure": False})  # no "off" among its choices: still an error


def test_default_structure_is_quant_and_a_rank_asks_for_joint():
    assert build_config("fa").structure == "quant"
    assert build_config("fa", {"rank": 4}).structure == "joint"
    assert build_config("fa", {"rank_fraction": 0.1}).structure == "joint"
    with pytest.raises(ConfigError, match="no low-rank part"):
        build_config("fa", {"structure": "quant", "rank": 4})
