"""`fa-gptq -O axis=output`: PolarQuant on the output-axis spectrum with GPTQ's error feedback."""

import pytest
import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats.fourier import FourierLinear
from llava_fa.methods import LayerStats, build_config, get_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(m=64, n=256, tokens=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g) * 0.02
    # correlated inputs: the case where pushing errors onto later columns pays
    x = torch.randn(tokens, n // 4, generator=g) @ torch.randn(n // 4, n, generator=g) + 0.1 * torch.randn(tokens, n, generator=g)
    return W, LayerStats(n, xtx={"text": x.T @ x}, sq={"text": (x * x).sum(0)}, tokens={"text": tokens, "image": 0})


def _act_err(W, Q, H):
    D = (Q - W).double()
    return float(((D @ H.double()) * D).sum() / ((W.double() @ H.double()) * W.double()).sum()) ** 0.5


_OUTPUT = {"axis": "output"}  # this file checks the output-axis loop; test_fa_gptq_input_axis.py the default


def test_feedback_lowers_the_activation_error_and_bits_are_counted():
    W, stats = _problem()
    method = get_method("fa-gptq")(build_config("fa-gptq", _OUTPUT))
    layer = method.compress(W, stats)
    assert isinstance(layer, FourierLinear) and layer.mode == "rfft_out"
    # the same rounding without feedback: an identity Hessian has no off-diagonal to push errors along
    n = W.shape[1]
    plain = method.compress(W, LayerStats(n, xtx={"text": torch.eye(n)}, tokens={"text": 1, "image": 0}))
    H = stats.xtx_sum()
    assert _act_err(W, layer.dequantize(torch.float32), H) < 0.8 * _act_err(W, plain.dequantize(torch.float32), H)
    assert layer.storage_bits() == sum(layer.bits_breakdown().values())
    assert layer.bits_per_weight() == pytest.approx(3.12, abs=0.05)  # 2+4 bits per complex pair, fp16 scales / 64


def test_forward_modes_agree_and_the_layer_round_trips_its_state():
    W, stats = _problem(m=32, n=128)
    layer = get_method("fa-gptq")(build_config("fa-gptq", _OUTPUT)).compress(W, stats, bias=torch.randn(32))
    x = torch.randn(3, 128)
    ref = x @ layer.dequantize(torch.float32).T + layer.bias
    for mode in ("cached", "dequant", "spectral"):
        layer.forward_mode = mode
        torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-5)
    again = FourierLinear(128, 32, True, **layer.params())
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.dequantize(torch.float32), layer.dequantize(torch.float32))


def test_bad_shapes_and_missing_data_are_refused():
    method = get_method("fa-gptq")(build_config("fa-gptq", _OUTPUT))
    with pytest.raises(ConfigError, match="even number of outputs"):
        method.check_layer("odd", nn.Linear(128, 33))
    with pytest.raises(ConfigError, match="does not divide"):
        method.check_layer("narrow", nn.Linear(96, 32))
    with pytest.raises(ConfigError, match="calibration data"):
        method.compress(torch.randn(32, 128), None)
    with pytest.raises(ConfigError, match="mag_bits"):
        build_config("fa-gptq", {"mag_bits": 0})
