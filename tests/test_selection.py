"""targets / ignore on the module layouts of HF LLaVA, Qwen2(.5)-VL, Idefics3 and causal LMs."""

import pytest
import torch

import compress_fixtures as F
from llava_fa.errors import ConfigError
from llava_fa.selection import default_patterns, find_parts, select

DECODER_LINEARS = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj"}

LAYOUTS = {
    # name: (builder, decoder layers, vision, projector)
    "llava-dinov2": (F.llava, "model.language_model.layers", "model.vision_tower", "model.multi_modal_projector"),
    "llava-clip": (lambda: F.llava("clip"), "model.language_model.layers", "model.vision_tower",
                   "model.multi_modal_projector"),
    "qwen2-vl": (F.qwen2vl, "model.language_model.layers", "model.visual", "model.visual.merger"),
    "qwen2.5-vl": (lambda: F.qwen2vl(v25=True), "model.language_model.layers", "model.visual", "model.visual.merger"),
    "idefics3": (F.idefics3, "model.text_model.layers", "model.vision_model", "model.connector"),
    "llama": (F.llama, "model.layers", None, None),
}


@pytest.fixture(scope="module")
def models():
    return {k: v[0]() for k, v in LAYOUTS.items()}


def _linears_under(model, prefix):
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_default_is_the_language_decoder(models, layout):
    model, (_, layers, vision, projector) = models[layout], LAYOUTS[layout]
    parts = find_parts(model)
    assert (parts.layers, parts.vision, parts.projector, parts.lm_head) == (layers, vision, projector, "lm_head")
    names = select(model, *default_patterns(parts))
    assert names == [f"{layers}.{i}.{s}" for i in range(2) for s in
                     ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert not any("embed" in n or n == "lm_head" for n in names)


@pytest.mark.parametrize("layout", [k for k, v in LAYOUTS.items() if v[2]])
def test_vision_and_projector_are_opt_in(models, layout):
    model, (_, _, vision, projector) = models[layout], LAYOUTS[layout]
    parts = find_parts(model)
    proj = _linears_under(model, projector)
    vis = _linears_under(model, vision) - proj
    assert vis and proj
    base = set(select(model, *default_patterns(parts)))
    assert set(select(model, *default_patterns(parts, vision=True))) == base | vis
    assert set(select(model, *default_patterns(parts, projector=True))) == base | proj
    assert set(select(model, *default_patterns(parts, vision=True, projector=True))) == base | vis | proj


def test_no_vision_tower_to_add():
    with pytest.raises(ConfigError, match="no vision tower"):
        default_patterns(find_parts(F.llama()), vision=True)


def test_patterns_names_classes_regexes_and_ignore(models):
    model = models["llava-dinov2"]
    L = "model.language_model.layers"
    assert select(model, [f"{L}.0.mlp.down_proj"]) == [f"{L}.0.mlp.down_proj"]
    # class name: every nn.Linear, vision and head included; ignore prunes whole subtrees
    everything = select(model, ["Linear"], ["model.vision_tower", "model.multi_modal_projector", "lm_head"])
    assert set(everything) == _linears_under(model, L)
    # a regex that sweeps containers keeps only the linears in them
    mlp = select(model, [r"re:.*\.mlp"], ["re:.*vision_tower"])
    assert mlp == [f"{L}.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    assert select(model, [f"re:{L}\\.1\\."], [r"re:.*(q|k|v)_proj$"]) == [f"{L}.1.self_attn.o_proj"] + [
        f"{L}.1.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]


@pytest.mark.parametrize("targets, ignore, message", [
    (["model.language_model.embed_tokens"], [], "not a linear layer"),
    (["LlamaRMSNorm"], [], "not a linear layer"),
    (["re:.*layernorm$"], [], "matches no linear layer"),
    (["model.language_model.layers.9.mlp.up_proj"], [], "matches no linear layer"),
    (["Linear"], ["re:nothing\\.here"], "ignore pattern .* matches no module"),
    (["re:.*(unclosed"], [], "bad regular expression"),
    ([], [], "no targets"),
    (["re:model\\.language_model\\.layers\\.0\\.mlp\\."], ["model.language_model.layers.0.mlp"], "leave no layer"),
])
def test_bad_patterns(models, targets, ignore, message):
    with pytest.raises(ConfigError, match=message):
        select(models["llava-dinov2"], targets, ignore)


def test_tied_lm_head_is_refused():
    model = F.llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ConfigError, match="shares its weight.*embed_tokens"):
        select(model, ["lm_head"])
    assert select(F.llama(), ["lm_head"]) == ["lm_head"]  # untied: allowed when asked for explicitly
