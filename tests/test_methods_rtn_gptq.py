"""The method registry and config parsing, and the rtn and gptq methods."""

from dataclasses import dataclass

import pytest
import torch

from llava_fa.errors import ConfigError, DataError
from llava_fa.formats import AffineLinear
from llava_fa.methods import (LayerStats, Method, MethodConfig, available_methods, build_config, get_method,
                              register_method)
from llava_fa.methods.gptq import gptq_quantize
from llava_fa.quantizers import AffineSpec, dequantize_grouped, quantize_grouped


def _stats(X: torch.Tensor, image_rows: int = 0) -> LayerStats:
    """X^T X of the rows of X, the first `image_rows` counted as image tokens."""
    img, txt = X[:image_rows], X[image_rows:]
    st = LayerStats(X.shape[1], xtx={"text": txt.T @ txt}, tokens={"text": txt.shape[0], "image": img.shape[0]})
    if image_rows:
        st.xtx["image"] = img.T @ img
    return st


def _correlated(n=2048, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) * 0.2 + torch.randn(d, generator=g) * 2


def _out_err(W, W_hat, X):
    return ((X @ (W - W_hat).T).norm() / (X @ W.T).norm()).item()


def test_registry_and_names():
    assert {"rtn", "gptq"} <= set(available_methods())
    assert get_method("gptq").needs == {"xtx"} and get_method("rtn").needs == frozenset()
    with pytest.raises(ConfigError, match="unknown method 'awq'.*gptq.*rtn"):
        get_method("awq")

    class Bad(Method):
        name = "Bad-Name"
        Config = get_method("rtn").Config

        def compress(self, weight, stats, bias=None):
            raise NotImplementedError

    with pytest.raises(ValueError, match="short lowercase word"):
        register_method(Bad)

    class Hyphenated(Bad):
        name = "zz-test-x"  # the literature's names: pb-llm, arb-x, svd-llm

    from llava_fa.methods.base import METHODS

    try:
        assert register_method(Hyphenated) is Hyphenated and get_method("zz-test-x") is Hyphenated
    finally:
        METHODS.pop("zz-test-x", None)


def test_build_config_converts_and_rejects():
    cfg = build_config("gptq", {"bits": "3", "act-order": "true", "damp": "0.1", "group_size": -1})
    assert (cfg.bits, cfg.act_order, cfg.damp, cfg.group_size) == (3, True, 0.1, -1)
    with pytest.raises(ConfigError, match="rtn' has no option 'act_order'"):
        build_config("rtn", {"act_order": True})
    with pytest.raises(ConfigError, match="bits must be from 1 to 8"):
        build_config("rtn", {"bits": 9})
    with pytest.raises(ConfigError, match="expects int"):
        build_config("rtn", {"bits": "four"})
    with pytest.raises(ConfigError, match="expects int"):
        build_config("rtn", {"bits": 3.5})
    with pytest.raises(ConfigError, match="positive or -1"):
        build_config("gptq", {"group_size": 0})
    with pytest.raises(ConfigError, match="damp"):
        build_config("gptq", {"damp": -0.5})
    with pytest.raises(ConfigError, match="one of all, text, image"):
        build_config("gptq", {"modality": "audio"})
    with pytest.raises(ConfigError, match="expects bool"):
        build_config("gptq", {"act_order": "maybe"})
    with pytest.raises(ConfigError, match="at least 2 bits"):
        build_config("rtn", {"bits": 1, "sym": True})


def test_layer_stats():
    X = _correlated(64, 8)
    st = _stats(X, image_rows=16)
    assert st.count() == 64 and st.count("image") == 16
    torch.testing.assert_close(st.hessian(), 2 / 64 * X.T @ X)
    torch.testing.assert_close(st.hessian("image"), 2 / 16 * X[:16].T @ X[:16])
    torch.testing.assert_close(st.mean_sq("text"), (X[16:] ** 2).mean(0))
    with pytest.raises(ConfigError, match="no image tokens"):
        _stats(X).hessian("image")


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rtn_is_grouped_round_to_nearest(bits):
    W = torch.randn(32, 128)
    q = get_method("rtn")(build_config("rtn", {"bits": bits, "group_size": 32})).compress(W, None, torch.ones(32))
    assert isinstance(q, AffineLinear) and q.bias is not None
    assert torch.equal(q.dequantize(), dequantize_grouped(*quantize_grouped(W, AffineSpec(bits, 32))))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_rtn_on_the_output_error(bits, group_size, act_order):
    torch.manual_seed(bits)
    W, X = torch.randn(64, 128), _correlated()
    rtn = get_method("rtn")(build_config("rtn", {"bits": bits, "group_size": group_size})).compress(W, None)
    cfg = build_config("gptq", {"bits": bits, "group_size": group_size, "act_order": act_order, "block_size": 48})
    gq = get_method("gptq")(cfg).compress(W, _stats(X))
    assert gq.storage_bits() == rtn.storage_bits()  # same format, same budget
    assert _out_err(W, gq.dequantize(), X) < 0.8 * _out_err(W, rtn.dequantize(), X)


def test_gptq_with_identity_hessian_is_rtn():
    # With H = I there is no error to feed back: GPTQ reduces to round-to-nearest, block by block.
    W = torch.randn(16, 64)
    for act_order in (False, True):
        codes, scale, zero = gptq_quantize(W, torch.eye(64), bits=3, group_size=16, act_order=act_order, block_size=24)
        assert torch.equal(dequantize_grouped(codes, scale, zero),
                           dequantize_grouped(*quantize_grouped(W, AffineSpec(3, 16))))


def test_gptq_block_size_does_not_change_the_result():
    W, X = torch.randn(16, 96), _correlated(512, 96)
    H = 2 / 512 * X.T @ X
    a = gptq_quantize(W, H, bits=3, group_size=32, block_size=96)
    b = gptq_quantize(W, H, bits=3, group_size=32, block_size=20)  # blocks straddle groups
    diff = (dequantize_grouped(*a) - dequantize_grouped(*b)).abs()
    # identical up to float reassociation, which may flip a rare rounding tie
    assert (diff > 1e-4).float().mean() < 0.01


def test_gptq_dead_inputs_and_modalities():
    W, X = torch.randn(8, 32), _correlated(256, 32)
    X[:, 5] = 0  # an input channel that never fires
    st = _stats(X, image_rows=64)
    q = get_method("gptq")(build_config("gptq", {"bits": 4, "group_size": 16})).compress(W, st)
    assert torch.equal(q.dequantize()[:, 5], torch.zeros(8))
    only_image = get_method("gptq")(build_config("gptq", {"bits": 4, "group_size": 16, "modality": "image"}))
    assert not torch.equal(only_image.compress(W, st).dequantize(), q.dequantize())
    with pytest.raises(ConfigError, match="no image tokens"):
        only_image.compress(W, _stats(X))
    with pytest.raises(ConfigError, match="needs calibration"):
        get_method("gptq")().compress(W, None)


def test_gptq_singular_hessian_without_damping_is_a_clear_error():
    X = torch.randn(3, 16)  # rank 3 < 16, every channel active
    with pytest.raises(DataError, match="not positive definite.*--damp"):
        get_method("gptq")(build_config("gptq", {"damp": 0, "group_size": 16})).compress(torch.randn(4, 16), _stats(X))


def test_a_new_method_plugs_in_with_one_class():
    @dataclass
    class HalfConfig(MethodConfig):
        bits: int = 8

    class Half(Method):  # registered only inside this test
        name = "halfrtn"
        Config = HalfConfig

        def compress(self, weight, stats, bias=None):
            return get_method("rtn")(build_config("rtn", {"bits": self.config.bits})).compress(weight, stats, bias)

    from llava_fa.methods.base import METHODS

    register_method(Half)
    try:
        assert "halfrtn" in available_methods() and build_config("halfrtn", {"bits": "7"}).bits == 7
    finally:
        METHODS.pop("halfrtn")
