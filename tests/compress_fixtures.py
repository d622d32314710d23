"""Tiny randomly initialized models (and a byte-level tokenizer/processor) for the compression tests.

Nothing is downloaded: configs, weights, tokenizer and image processor are built here.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import torch

IMAGE = "<image>"
SPECIALS = ["<|im_end|>", "<pad>", "<|im_start|>", IMAGE]  # in the ids the tokenizer assigns
VOCAB = 256 + len(SPECIALS)
IMAGE_ID = 256 + SPECIALS.index(IMAGE)
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)


def tokenizer(image_token: str = IMAGE):
    """Bytes, then SPECIALS (the image placeholder spelled `image_token`, its id is IMAGE_ID either way)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", image_token])
    assert [fast.convert_tokens_to_ids(t) for t in SPECIALS[:-1] + [image_token]] == list(range(256, VOCAB))
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


def idefics3(seed: int = 0, vocab_size: int = VOCAB):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig, LlamaConfig

    torch.manual_seed(seed)
    vis = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14)
    text = LlamaConfig(**dict(TEXT, vocab_size=vocab_size))
    cfg = Idefics3Config(text_config=text, vision_config=vis, scale_factor=2, image_token_id=IMAGE_ID)
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


# --- families whose decoder layers receive different arguments (tests/test_families.py) -------------------

def gemma3(seed: int = 0, layer_types: tuple[str, ...] = ("sliding_attention", "full_attention", "sliding_attention"),
           sliding_window: int = 4):
    """A text Gemma 3 whose layers mix sliding-window and full attention (each with its own rotary embeddings)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(**dict(TEXT, num_hidden_layers=len(layer_types), head_dim=16),
                           layer_types=list(layer_types), sliding_window=sliding_window)
    return Gemma3ForCausalLM(cfg).eval()


MLLAMA_TEXT = dict(TEXT, num_hidden_layers=3, cross_attention_layers=[1], bos_token_id=258, eos_token_id=256,
                   pad_token_id=257)  # <|im_start|>, <|im_end|>, <pad>
MLLAMA_TEXT.pop("max_position_embeddings")


def mllama(seed: int = 0):
    """Llama 3.2 Vision in miniature: 3 decoder layers, layer 1 cross-attends to one 28x28 tile (5 vision tokens)."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    torch.manual_seed(seed)
    vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
               image_size=28, patch_size=14, max_num_tiles=1, supported_aspect_ratios=[[1, 1]],
               intermediate_layers_indices=[0], vision_output_dim=64)
    cfg = MllamaConfig(vision_config=vis, text_config=MLLAMA_TEXT, image_token_index=IMAGE_ID)
    return MllamaForConditionalGeneration(cfg).eval()


def mllama_inputs(seed: int = 0, n_text: int = 12) -> dict:
    """One image placeholder in a text prompt, the image as one tile."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (1, n_text), generator=g)
    ids[0, 1] = IMAGE_ID
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 1, 1, 3, 28, 28, generator=g), "aspect_ratio_ids": torch.tensor([[1]]),
            "aspect_ratio_mask": torch.ones(1, 1, 1, dtype=torch.long),
            "cross_attention_mask": torch.ones(1, n_text, 1, 1, dtype=torch.long)}


# --- model folders with their own processor (chat template, image processor) -------------------------------

@contextlib.contextmanager
def without_video_processor():
    """transformers 5 builds (and loads) Qwen2-VL's processor with a video processor, which needs torchvision;
    where torchvision is missing, the processor is made of its image processor and tokenizer alone."""
    from transformers import Qwen2VLProcessor

    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    saved = Qwen2VLProcessor.__dict__.get("get_attributes")
    Qwen2VLProcessor.get_attributes = classmethod(lambda cls: ["image_processor", "tokenizer"])
    try:
        yield
    finally:
        if saved is None:
            del Qwen2VLProcessor.get_attributes
        else:
            Qwen2VLProcessor.get_attributes = saved


def save_qwen2vl_dir(path: Path, seed: int = 0) -> Path:
    """Tiny Qwen2-VL with its processor: a 64x64 image becomes 4x4 patches merged into 4 <|image_pad|> tokens.
    Call inside `without_video_processor()`."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from llava_fa.testbed.prompt import CHAT_TEMPLATE

    images = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                                      max_pixels=56 * 56)
    processor = Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer("<|image_pad|>"),
                                 chat_template=CHAT_TEMPLATE.replace(IMAGE, "<|image_pad|>"))
    qwen2vl(seed=seed).save_pretrained(path)
    processor.save_pretrained(path)
    images.save_pretrained(path)  # preprocessor_config.json, as in the released models (also read for videos)
    return Path(path)


def save_idefics3_dir(path: Path, seed: int = 0) -> Path:
    """Tiny Idefics3 with its processor: one 28x28 image, one <image> token between its two markers."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from llava_fa.testbed.prompt import CHAT_TEMPLATE

    images = Idefics3ImageProcessorPil(size={"longest_edge": 28}, max_image_size={"longest_edge": 28},
                                       do_image_splitting=False)
    tok = tokenizer()
    processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=1, chat_template=CHAT_TEMPLATE)
    idefics3(seed=seed, vocab_size=len(tok)).save_pretrained(path)  # the processor added its marker tokens
    processor.save_pretrained(path)
    return Path(path)
