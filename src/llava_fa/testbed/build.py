"""Assemble a testbed LLaVA: DINOv2-S/14 tower + MLP projector + a language model of the table in
`language_models.py` (SmolLM2-135M-Instruct by default, or Qwen2.5-Coder-0.5B-Instruct).

The result is a standard `LlavaForConditionalGeneration` directory that plain `transformers`
loads. The projector (and, when trained, a LoRA adapter of the language model, merged here) come
from the small weight files committed in `testbed/weights/<language model>/`, produced by
`testbed/train.py`.
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
from llava_fa.testbed.language_models import DEFAULT_LANGUAGE_MODEL, get_language_model, load_language_model
from llava_fa.testbed.prompt import CHAT_TEMPLATE, IMAGE_TOKEN


@dataclass
class TestbedConfig:
    image_size: int = 112  # 64x64 easy-VQA images upsampled to 8x8 patches of 14 px: 64 image tokens
    patch_size: int = 14
    vision_feature_layer: int = -1
    dtype: str = "float32"  # the GGUF weights dequantize exactly in float32
    seed: int = 0
    language_model: str = DEFAULT_LANGUAGE_MODEL


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
    if not lm.config.tie_word_embeddings:  # Qwen2.5's GGUF has its own output matrix (Q8_0)
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(get_language_model(cfg.language_model).eos_token)
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

    lm, tokenizer = load_language_model(get_language_model(cfg.language_model))
    vision = convert_onnx_to_dinov2(assets.dinov2_onnx())
    return lm, tokenizer, vision


def check_trained_weights(language_model: str, weights_dir: Path | None = None) -> Path:
    """The folder of the committed weights; FileNotFoundError with the fix when it has no projector."""
    weights_dir = Path(weights_dir or get_language_model(language_model).weights_dir)
    projector = weights_dir / "projector.safetensors"
    if not projector.exists():
        raise FileNotFoundError(
            f"no trained projector for {language_model}: {projector} is missing. Fix: pass --untrained to build "
            f"with a random projector, or train one with `python -m llava_fa.testbed.train --language-model "
            f"{language_model} --out runs/{language_model}` and copy its projector.safetensors and training.json "
            f"into {weights_dir}/.")
    return weights_dir


def apply_trained_weights(model: LlavaForConditionalGeneration, weights_dir: Path) -> dict:
    """Load the committed projector and merge the LoRA adapter (if any) into the language model."""
    model.model.multi_modal_projector.load_state_dict(load_file(weights_dir / "projector.safetensors"))
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
    weights_dir = check_trained_weights(cfg.language_model) if trained else None  # fail before the slow load
    lm, tokenizer, vision = load_sources(cfg)
    model, processor = build_llava(lm, tokenizer, vision, cfg)
    info = apply_trained_weights(model, weights_dir) if trained else {"projector": "random (untrained)"}
    save_atomic(model, processor, out, getattr(torch, cfg.dtype))
    return info
