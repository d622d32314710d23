"""Assemble the testbed LLaVA: DINOv2-S/14 tower + MLP projector + SmolLM2-135M-Instruct.

The result is a standard `LlavaForConditionalGeneration` directory that plain `transformers`
loads. The projector (and, when trained, a LoRA adapter of the language model, merged here) come
from the small weight files committed in `testbed/weights/`, produced by `testbed/train.py`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedModel

from llava_fa import assets
from llava_fa.testbed.prompt import CHAT_TEMPLATE, IMAGE_TOKEN

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass
class TestbedConfig:
    image_size: int = 112  # 64x64 easy-VQA images upsampled to 8x8 patches of 14 px: 64 image tokens
    patch_size: int = 14
    vision_feature_layer: int = -1
    dtype: str = "float32"  # the GGUF Q4_1 weights are exact in float32
    seed: int = 0


def build_llava(lm: PreTrainedModel, tokenizer, vision: PreTrainedModel, cfg: TestbedConfig = TestbedConfig()):
    """A LLaVA model with a freshly (seeded) initialized projector, and its processor."""
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    torch.manual_seed(cfg.seed)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    config = LlavaConfig(
        vision_config=vision.config.to_dict() | {"model_type": "dinov2"},
        text_config=lm.config.to_dict() | {"model_type": lm.config.model_type},
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy="default",
    )
    with torch.device("cpu"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, make_processor(tokenizer, cfg)


def make_processor(tokenizer, cfg: TestbedConfig) -> LlavaProcessor:
    from llava_fa.testbed.dinov2_onnx import dinov2_image_processor

    return LlavaProcessor(
        image_processor=dinov2_image_processor(cfg.image_size),
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # DINOv2's CLS token, dropped by the "default" strategy
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def load_sources(cfg: TestbedConfig = TestbedConfig()):
    """Fetch the pinned assets and load the language model, tokenizer and vision tower."""
    from llava_fa.testbed.dinov2_onnx import convert_onnx_to_dinov2
    from llava_fa.testbed.smollm2 import load_smollm2

    lm, tokenizer = load_smollm2(assets.smollm2_gguf())
    vision = convert_onnx_to_dinov2(assets.dinov2_onnx())
    return lm, tokenizer, vision


def apply_trained_weights(model: LlavaForConditionalGeneration, weights_dir: Path = WEIGHTS_DIR) -> dict:
    """Load the committed projector and merge the LoRA adapter (if any) into the language model."""
    projector = weights_dir / "projector.safetensors"
    if not projector.exists():
        raise FileNotFoundError(f"{projector} is missing. Fix: train it with `python -m llava_fa.testbed.train` "
                                f"or pass --untrained to build with a random projector.")
    model.model.multi_modal_projector.load_state_dict(load_file(projector))
    lora = weights_dir / "lora.safetensors"
    if lora.exists():
        merge_lora(model, load_file(lora))
    info = weights_dir / "training.json"
    return json.loads(info.read_text()) if info.exists() else {}


def merge_lora(model: torch.nn.Module, lora: dict[str, torch.Tensor]) -> None:
    """W += scale * B @ A for every `<module>.lora_A` / `<module>.lora_B` / `<module>.lora_scale` triple."""
    modules = dict(model.named_modules())
    for key in [k for k in lora if k.endswith(".lora_A")]:
        name = key[: -len(".lora_A")]
        if name not in modules:
            raise ValueError(f"LoRA weights name {name!r}, which the model does not have")
        a, b, scale = lora[key], lora[f"{name}.lora_B"], lora[f"{name}.lora_scale"]
        weight = modules[name].weight
        with torch.no_grad():
            weight += (scale.float() * (b.float() @ a.float())).to(weight.dtype)


def save_atomic(model, processor, out: Path, dtype: torch.dtype) -> Path:
    """Write to a temporary sibling folder, then rename: `out` is complete or absent."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def build_testbed(out: Path, cfg: TestbedConfig = TestbedConfig(), trained: bool = True) -> dict:
    lm, tokenizer, vision = load_sources(cfg)
    model, processor = build_llava(lm, tokenizer, vision, cfg)
    info = apply_trained_weights(model) if trained else {"projector": "random (untrained)"}
    save_atomic(model, processor, out, getattr(torch, cfg.dtype))
    return info
