"""Forward modes shared by every compressed format: cached and per-call dequantization agree."""

import pytest
import torch

from llava_fa.methods.base import build_config, get_method


@pytest.mark.parametrize("method,options", [("rtn", {"bits": 3, "group_size": 16}), ("fa", {"structure": "quant"})])
def test_cached_and_dequant_forward_agree(method, options):
    torch.manual_seed(0)
    w = torch.randn(24, 32)
    layer = get_method(method)(build_config(method, options)).compress(w, None, torch.randn(24))
    x = torch.randn(4, 32)
    ref = x @ layer.dequantize().T + layer.bias
    outs = {}
    for mode in ("dequant", "cached", "cached"):  # the second cached call reads the cache
        layer.forward_mode = mode
        outs[mode] = layer(x)
        torch.testing.assert_close(outs[mode], ref, rtol=1e-5, atol=1e-5)
    assert not any("cache" in k for k in layer.state_dict())
    layer.forward_mode = "bogus"
    with pytest.raises(ValueError, match="forward_mode must be one of"):
        layer(x)


def test_cache_is_dropped_when_weights_change():
    torch.manual_seed(0)
    rtn = get_method("rtn")(build_config("rtn", {"bits": 4, "group_size": 16}))
    a, b = rtn.compress(torch.randn(8, 32), None), rtn.compress(torch.randn(8, 32), None)
    x = torch.randn(2, 32)
    a(x)  # fills the cache
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a(x), b(x))


def test_set_forward_mode_on_a_model_checks_every_layer_and_drops_caches():
    from llava_fa.errors import ConfigError
    from llava_fa.formats import set_forward_mode

    torch.manual_seed(0)
    rtn = get_method("rtn")(build_config("rtn", {"bits": 4, "group_size": 16}))
    fa = get_method("fa")(build_config("fa", {"structure": "quant"}))
    model = torch.nn.Sequential(rtn.compress(torch.randn(32, 32), None), fa.compress(torch.randn(16, 32), None))
    x = torch.randn(3, 32)
    ref = model(x)  # "cached": both layers now hold a dense copy
    assert all(m.__dict__.get("_cache") for m in model)
    assert set_forward_mode(model, "dequant") == 2
    assert not any(m.__dict__.get("_cache") for m in model)
    torch.testing.assert_close(model(x), ref)
    with pytest.raises(ConfigError, match=r"'spectral' is not available for 1 of the 2 .*format 'affine'"):
        set_forward_mode(model, "spectral")
    assert [m.forward_mode for m in model] == ["dequant", "dequant"]  # nothing changed by the refusal
    with pytest.raises(ConfigError, match="no compressed layers"):
        set_forward_mode(torch.nn.Sequential(torch.nn.Linear(4, 4)), "dequant")


def test_gemlite_mode_falls_back_where_gemlite_cannot_run():
    """Without gemlite or CUDA the "gemlite" mode runs "fused"'s chain (here: dequant), same result."""
    from llava_fa.formats import AffineLinear
    from llava_fa.quantizers import AffineSpec, quantize_grouped

    torch.manual_seed(0)
    codes, scale, zero = quantize_grouped(torch.randn(24, 64), AffineSpec(4, 32, False))
    layer = AffineLinear.from_codes(codes, scale, zero, bits=4, sym=False, bias=torch.randn(24))
    x = torch.randn(3, 64)
    layer.forward_mode = "gemlite"
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + layer.bias)
    assert "gemlite" in layer.forward_modes
