"""Family x method matrix: each tiny family is compressed with a few calibration samples of its own
inputs, saved, reloaded with from_pretrained, compared with the original and asked to generate.

Families: Llama, Qwen2, Qwen3, Phi3, Mistral, Gemma 3 (text and image-text), LLaVA, LLaVA-NeXT,
LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE (a MoE VLM), Idefics3, SmolVLM,
PaliGemma, InternVL, Qwen3-MoE and Mixtral (Mllama: tests/test_families.py), each with rtn, gptq
and fa at 8 bits (logits within 3% of the original) and sab (~1 bit: finite logits, reload equal
to the in-memory compressed model), >= 99% of the decoder's weights compressed (experts included).
The image-text families also compress their vision tower and projector on request, at a group
size that divides none of their widths.
"""

from __future__ import annotations

import pytest
import torch

import compress_fixtures as F
import vlm_fixtures as V
import llava_fa  # noqa: F401  (registers the quantizer with transformers)
from llava_fa.io.checkpoint import quantization_config, save_compressed
from llava_fa.methods import build_config, get_method
from llava_fa.pipeline import compress_model, default_patterns, find_parts, select

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {"rtn": {"bits": 8, "group_size": 32}, "gptq": {"bits": 8, "group_size": 32},
           "fa": {"mag_bits": 8, "phase_bits": 8, "group_size": 32, "rank": 4, "iters": 1, "odc": "calibrated"}}


def _text(kind: str, **extra):
    """A plain text family built from the shared tiny TEXT config."""
    import transformers

    def build(seed: int = 0):
        torch.manual_seed(seed)
        cfg = getattr(transformers, f"{kind}Config")(**dict(F.TEXT, **extra))
        return getattr(transformers, f"{kind}ForCausalLM")(cfg).eval()
    return build


def _moe(kind):
    import test_moe
    return getattr(test_moe, kind)


FAMILIES = {  # name: (builder, calibration/evaluation inputs by seed)
    "llama": (F.llama, lambda s: F.text_inputs(seed=s)),
    "qwen2": (_text("Qwen2"), lambda s: F.text_inputs(seed=s)),
    "qwen3": (_text("Qwen3", head_dim=16), lambda s: F.text_inputs(seed=s)),
    "phi3": (_text("Phi3", pad_token_id=257), lambda s: F.text_inputs(seed=s)),
    "mistral": (_text("Mistral"), lambda s: F.text_inputs(seed=s)),
    "gemma3": (F.gemma3, lambda s: F.text_inputs(seed=s)),
    "llava": (F.llava, lambda s: F.llava_inputs(seed=s)),
    "qwen2_vl": (F.qwen2vl, lambda s: F.qwen2vl_inputs(seed=s)),
    "qwen2_5_vl": (lambda: F.qwen2vl(v25=True), lambda s: F.qwen2vl_inputs(seed=s)),
    "idefics3": (F.idefics3, lambda s: F.idefics3_inputs(seed=s)),
    "qwen3_moe": (lambda: _moe("qwen3_moe")(), lambda s: F.text_inputs(seed=s)),
    "mixtral": (lambda: _moe("mixtral")(), lambda s: F.text_inputs(seed=s)),
    **V.FAMILIES,
}


def decoder_weights(model) -> int:
    """Matrices of the language decoder's layers (experts included, norms not)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if any(n.startswith(f"model.{lm}layers.") for lm in ("", "language_model.", "text_model."))
               and p.dim() >= 2)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_compress_save_reload_generate(tmp_path, family, name):
    build, inputs = FAMILIES[family]
    model = build()
    total = decoder_weights(model)  # before compression turns the weights into codes
    probe = inputs(5)
    dense = logits(model, probe)
    names = select(model, *default_patterns(find_parts(model)))
    method = get_method(name)(build_config(name, METHODS[name]))
    rows = compress_model(model, method, names, [inputs(0), inputs(1)])
    decoder = sum(r.in_features * r.out_features for r in rows if ".layers." in r.name and "vision" not in r.name
                  and "visual" not in r.name)
    assert decoder / total > 0.99
    compressed = logits(model, probe)
    assert ((compressed - dense).norm() / dense.norm()).item() < 0.03  # 8 bits: ~0.7% per layer, up to 3 layers
    out = save_compressed(model, tmp_path / "q", quantization_config(model, name, method.config.to_dict(),
                                                                     ["Linear"], []))
    loaded = type(model).from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded, probe), compressed)
    ids = probe["input_ids"][:, :4]
    assert loaded.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=3, max_new_tokens=3,
                           do_sample=False).shape == (1, 7)


@pytest.mark.parametrize("family", FAMILIES)
def test_sab_binarized_model_is_finite_and_reloads_as_compressed(tmp_path, family):
    """About 1 bit: the logits move far from the original, so only finiteness and an exact reload are checked."""
    build, inputs = FAMILIES[family]
    model = build()
    probe = inputs(5)
    names = select(model, *default_patterns(find_parts(model)))
    method = get_method("sab")(build_config("sab", {}))
    compress_model(model, method, names, [inputs(0), inputs(1)])
    compressed = logits(model, probe)
    assert torch.isfinite(compressed).all()
    out = save_compressed(model, tmp_path / "q", quantization_config(model, "sab", method.config.to_dict(),
                                                                     ["Linear"], []))
    loaded = type(model).from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded, probe), compressed)


VLMS = ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", *V.FAMILIES)  # every image-text family here
# Group size 24 divides none of the tiny towers' widths (32, 64, 128): every vision and projector
# linear keeps a shorter last group, as Qwen2.5-VL's 3420-wide MLP does at 128 (formats/affine.py).
RAGGED = {"rtn": {"bits": 8, "group_size": 24}, "gptq": {"bits": 8, "group_size": 24, "act_order": True},
          "hqq": {"bits": 8, "group_size": 24}, "fa": dict(METHODS["fa"], group_size=24)}


@pytest.mark.parametrize("name", RAGGED)
@pytest.mark.parametrize("family", VLMS)
def test_vision_tower_and_projector_opt_in_with_widths_no_group_divides(tmp_path, family, name):
    build, inputs = FAMILIES[family]
    model = build()
    parts = find_parts(model)
    probe = inputs(5)
    dense = logits(model, probe)
    # Gemma 3's projector is a plain matrix parameter, no linear layer: only its tower then
    projector = any(isinstance(m, torch.nn.Linear) for m in model.get_submodule(parts.projector).modules())
    names = select(model, *default_patterns(parts, vision=True, projector=projector))
    outside = [n for n in names if not n.startswith(parts.layers + ".")]
    assert any(n.startswith(parts.projector + ".") for n in outside) == projector
    assert any(n.startswith(parts.vision + ".") and not n.startswith(parts.projector + ".") for n in outside)
    widths = {model.get_submodule(n).in_features for n in outside}
    assert all(w % 24 for w in widths)
    method = get_method(name)(build_config(name, RAGGED[name]))
    rows = compress_model(model, method, names, [inputs(0), inputs(1)])
    assert {r.name for r in rows} == set(names)
    compressed = logits(model, probe)
    assert ((compressed - dense).norm() / dense.norm()).item() < 0.03
    out = save_compressed(model, tmp_path / "q", quantization_config(model, name, method.config.to_dict(),
                                                                     ["Linear"], []))
    loaded = type(model).from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded, probe), compressed)
