"""Tiny image-text models of the families compress_fixtures does not build, with inputs that match
what their processors produce (image placeholders in the count the model's image features have).

Every model has a 2-layer text decoder of compress_fixtures.TEXT and a 1-2 layer vision tower of
width 32 on 28x28 images (2x2 patches of 14 px).
"""

from __future__ import annotations

import torch
import transformers as T

from compress_fixtures import IMAGE_ID, TEXT, VOCAB, qwen2vl_inputs

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
              patch_size=14)


def image_prompt(n_image: int, seed: int, n_text: int = 10) -> tuple[torch.Generator, torch.Tensor]:
    """Random text ids with `n_image` image placeholders at position 3."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (1, n_text + n_image), generator=g)
    ids[0, 3:3 + n_image] = IMAGE_ID
    return g, ids


def _inputs(ids: torch.Tensor, **extra) -> dict:
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}


def llava_next(seed: int = 0):
    torch.manual_seed(seed)
    cfg = T.LlavaNextConfig(vision_config=T.CLIPVisionConfig(**VISION, projection_dim=32),
                            text_config=T.LlamaConfig(**TEXT), image_token_id=IMAGE_ID,
                            image_grid_pinpoints=[[28, 28]], tie_word_embeddings=False)
    return T.LlavaNextForConditionalGeneration(cfg).eval()


def anyres_inputs(seed: int = 0) -> dict:
    """Base image + one 28x28 tile: 4 + 4 features and 2 row-end newlines (LLaVA-NeXT, OneVision)."""
    g, ids = image_prompt(10, seed)
    return _inputs(ids, pixel_values=torch.randn(1, 2, 3, 28, 28, generator=g), image_sizes=torch.tensor([[28, 28]]))


def llava_onevision(seed: int = 0):
    torch.manual_seed(seed)
    cfg = T.LlavaOnevisionConfig(vision_config=T.SiglipVisionConfig(**VISION), text_config=T.Qwen2Config(**TEXT),
                                 image_token_id=IMAGE_ID, image_grid_pinpoints=[[28, 28]], tie_word_embeddings=False)
    return T.LlavaOnevisionForConditionalGeneration(cfg).eval()


def paligemma(seed: int = 0):
    torch.manual_seed(seed)
    cfg = T.PaliGemmaConfig(vision_config=T.SiglipVisionConfig(**VISION, projection_dim=64),
                            text_config=T.GemmaConfig(**dict(TEXT, head_dim=16)), image_token_id=IMAGE_ID,
                            projection_dim=64, hidden_size=64)
    return T.PaliGemmaForConditionalGeneration(cfg).eval()


def paligemma_inputs(seed: int = 0) -> dict:
    """4 patch features, the image prefix marked in token_type_ids as PaliGemma's processor does."""
    g, ids = image_prompt(4, seed)
    return _inputs(ids, pixel_values=torch.randn(1, 3, 28, 28, generator=g), token_type_ids=torch.zeros_like(ids))


def internvl(seed: int = 0):
    torch.manual_seed(seed)
    vis = T.InternVLVisionConfig(**dict(VISION, image_size=[28, 28], patch_size=[14, 14]))
    cfg = T.InternVLConfig(vision_config=vis, text_config=T.Qwen2Config(**TEXT), image_token_id=IMAGE_ID,
                           downsample_ratio=0.5)
    return T.InternVLForConditionalGeneration(cfg).eval()


def single_token_inputs(seed: int = 0, frames: bool = False) -> dict:
    """2x2 patches reduced to one image feature (InternVL's pixel shuffle, SmolVLM's, Gemma 3's pooling)."""
    g, ids = image_prompt(1, seed)
    shape = (1, 1, 3, 28, 28) if frames else (1, 3, 28, 28)
    return _inputs(ids, pixel_values=torch.randn(*shape, generator=g))


def smolvlm(seed: int = 0):
    torch.manual_seed(seed)
    vis = T.SmolVLMVisionConfig(**dict(VISION, num_hidden_layers=1))
    cfg = T.SmolVLMConfig(text_config=T.LlamaConfig(**TEXT), vision_config=vis, scale_factor=2, image_token_id=IMAGE_ID)
    return T.SmolVLMForConditionalGeneration(cfg).eval()


def gemma3_vlm(seed: int = 0):
    torch.manual_seed(seed)
    text = T.Gemma3TextConfig(**dict(TEXT, head_dim=16, layer_types=["sliding_attention", "full_attention"],
                                     sliding_window=8))
    cfg = T.Gemma3Config(text_config=text, vision_config=T.SiglipVisionConfig(**VISION), mm_tokens_per_image=1,
                         image_token_id=IMAGE_ID, boi_token_index=256, eoi_token_index=257)
    return T.Gemma3ForConditionalGeneration(cfg).eval()


def gemma3_vlm_inputs(seed: int = 0) -> dict:
    inputs = single_token_inputs(seed)
    return dict(inputs, token_type_ids=(inputs["input_ids"] == IMAGE_ID).long())


QWEN3_IDS = dict(image_token_id=IMAGE_ID, video_token_id=VOCAB - 1, vision_start_token_id=256, vision_end_token_id=257)
QWEN3_VISION = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[0], num_position_embeddings=16)
QWEN3_TEXT = dict(TEXT, head_dim=16, rope_scaling={"rope_type": "default", "mrope_section": [2, 2, 4],
                                                    "mrope_interleaved": True})


def qwen3_vl(seed: int = 0, moe: bool = False):
    torch.manual_seed(seed)
    if moe:
        text = dict(QWEN3_TEXT, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        cfg = T.Qwen3VLMoeConfig(text_config=text, vision_config=QWEN3_VISION, **QWEN3_IDS)
        return T.Qwen3VLMoeForConditionalGeneration(cfg).eval()
    cfg = T.Qwen3VLConfig(text_config=QWEN3_TEXT, vision_config=QWEN3_VISION, **QWEN3_IDS)
    return T.Qwen3VLForConditionalGeneration(cfg).eval()


FAMILIES = {  # name: (builder, inputs by seed)
    "llava_next": (llava_next, anyres_inputs),
    "llava_onevision": (llava_onevision, anyres_inputs),
    "paligemma": (paligemma, paligemma_inputs),
    "internvl": (internvl, single_token_inputs),
    "smolvlm": (smolvlm, lambda s: single_token_inputs(s, frames=True)),
    "gemma3_vlm": (gemma3_vlm, gemma3_vlm_inputs),
    "qwen3_vl": (qwen3_vl, qwen2vl_inputs),  # Qwen2-VL's grid and placeholders
    "qwen3_vl_moe": (lambda seed=0: qwen3_vl(seed, moe=True), qwen2vl_inputs),
}
