"""Tiny randomly initialized models (and a byte-level tokenizer/processor) for the compression tests.

Nothing is downloaded: configs, weights, tokenizer and image processor are built here.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE = "<image>"
SPECIALS = ["<|im_end|>", "<pad>", "<|im_start|>", IMAGE]  # in the ids the tokenizer assigns
VOCAB = 256 + len(SPECIALS)
IMAGE_ID = 256 + SPECIALS.index(IMAGE)
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", IMAGE])
    assert [fast.convert_tokens_to_ids(t) for t in SPECIALS] == list(range(256, VOCAB))
    return fast


def llava(vision: str = "dinov2", seed: int = 0, layers: int = 2):
    from transformers import CLIPVisionConfig, Dinov2Config, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                 patch_size=14)
    vcfg = Dinov2Config(**small) if vision == "dinov2" else CLIPVisionConfig(**small, projection_dim=32)
    cfg = LlavaConfig(vision_config=vcfg, text_config=LlamaConfig(**dict(TEXT, num_hidden_layers=layers)),
                      image_token_id=IMAGE_ID, tie_word_embeddings=False)
    return LlavaForConditionalGeneration(cfg).eval()


def llava_inputs(n_text: int = 12, seed: int = 0) -> dict:
    """One image (28x28 -> 2x2 patches; the CLS feature is dropped) inside a text prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (1, n_text + 4), generator=g)
    ids[0, 2:6] = IMAGE_ID
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 3, 28, 28, generator=g)}


def qwen2vl(v25: bool = False, seed: int = 0):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    torch.manual_seed(seed)
    text = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]})
    ids = dict(image_token_id=IMAGE_ID, video_token_id=VOCAB - 1, vision_start_token_id=256, vision_end_token_id=257)
    if v25:
        vis = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0])
        return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vis, **ids)).eval()
    vis = dict(depth=1, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
               temporal_patch_size=2)
    return Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vis, **ids)).eval()


def qwen2vl_inputs(seed: int = 0) -> dict:
    """A 4x4-patch image merged 2x2 into 4 image tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (1, 14), generator=g)
    ids[0, 3] = 256  # stands in for <|vision_start|>
    ids[0, 4:8] = IMAGE_ID
    ids[0, 8] = 257
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == IMAGE_ID).long(),
            "pixel_values": torch.randn(16, 3 * 2 * 14 * 14, generator=g), "image_grid_thw": torch.tensor([[1, 4, 4]])}


def idefics3(seed: int = 0):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig, LlamaConfig

    torch.manual_seed(seed)
    vis = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14)
    cfg = Idefics3Config(text_config=LlamaConfig(**TEXT), vision_config=vis, scale_factor=2, image_token_id=IMAGE_ID)
    return Idefics3ForConditionalGeneration(cfg).eval()


def idefics3_inputs(seed: int = 0) -> dict:
    """2x2 patches pixel-shuffled by 2: one image token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (1, 10), generator=g)
    ids[0, 4] = IMAGE_ID
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 1, 3, 28, 28, generator=g)}


def llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TEXT)).eval()


def text_inputs(n: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (1, n), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def save_llava_dir(path: Path, seed: int = 0) -> Path:
    """A tiny LLaVA checkpoint with its processor (chat template of the testbed), as a model directory."""
    from transformers import BitImageProcessor, LlavaProcessor

    from llava_fa.testbed.prompt import CHAT_TEMPLATE

    model = llava(seed=seed)
    image_processor = BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token=IMAGE, chat_template=CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Path(path)


def save_llama_dir(path: Path, seed: int = 0) -> Path:
    model = llama(seed)
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return Path(path)
