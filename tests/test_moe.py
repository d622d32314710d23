"""MoE experts (stored fused by transformers 5) are selected, calibrated per expert, compressed, saved
and loaded back by from_pretrained: tiny Qwen3-MoE and Mixtral, 2 layers of 4 experts (top 2)."""

import inspect
import json
import logging
import re
from pathlib import Path

import pytest
import torch

import compress_fixtures as F
import llava_fa  # noqa: F401  (registers the quantizer with transformers)
from llava_fa.formats import CompressedLinear, LinearExperts, unfuse_experts
from llava_fa.formats.experts import FUSED_EXPERTS
from llava_fa.io.checkpoint import quantization_config, save_compressed
from llava_fa.methods import build_config, get_method
from llava_fa.pipeline import compress_checkpoint, compress_model, default_patterns, find_parts, select
from llava_fa.recipe import Calibration, Recipe
from llava_fa.selection import count_selected

pytestmark = pytest.mark.usefixtures("one_thread")

EXPERTS, TOP_K = 4, 2
METHODS = {  # 8 bits: the compressed model must stay close to the original
    "rtn": {"bits": 8, "group_size": 32},
    "gptq": {"bits": 8, "group_size": 32},
    "fa": {"mag_bits": 8, "phase_bits": 8, "group_size": 32, "rank": 4, "iters": 1, "odc": "calibrated"},
}


def qwen3_moe(seed: int = 0):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(**dict(F.TEXT, intermediate_size=64), moe_intermediate_size=32, head_dim=16,
                         num_experts=EXPERTS, num_experts_per_tok=TOP_K, norm_topk_prob=True)
    return Qwen3MoeForCausalLM(cfg).eval()


def mixtral(seed: int = 0):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    cfg = MixtralConfig(**dict(F.TEXT, intermediate_size=32), num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)
    return MixtralForCausalLM(cfg).eval()


FAMILIES = {"qwen3_moe": qwen3_moe, "mixtral": mixtral}


def method(name: str):
    return get_method(name)(build_config(name, METHODS[name]))


def decoder_weights(model) -> int:
    """Weights of the decoder layers' matrices (experts, attention and routers; not norms)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.layers.") and p.dim() >= 2)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def ban_expert(model, expert: int) -> None:
    """Route no token to `expert` in any layer (the router's output recomputed with that logit at -inf)."""
    def hook(router, args, out):
        masked = out[0].clone()
        masked[:, expert] = float("-inf")
        top, index = masked.softmax(-1, dtype=torch.float).topk(router.top_k, dim=-1)
        return out[0], (top / top.sum(-1, keepdim=True)).to(out[1].dtype), index

    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(hook)


# --- the experts module -------------------------------------------------------------------------

def test_fused_classes_in_the_table_run_the_loop_of_linear_experts():
    """Every class listed in FUSED_EXPERTS has the eager forward of Qwen3MoeExperts, which
    LinearExperts.forward reproduces (checked numerically below for Qwen3-MoE and Mixtral)."""
    import transformers

    root = Path(transformers.__file__).parent / "models"

    def forward_source(name):
        path = next(p for p in root.glob("*/modeling_*.py") if f"class {name}(" in p.read_text())
        module = __import__(f"transformers.models.{path.parent.name}.{path.stem}", fromlist=[name])
        forward = getattr(module, name).forward
        return re.sub(r"\s+", " ", inspect.getsource(getattr(forward, "__wrapped__", forward)))

    reference = forward_source("Qwen3MoeExperts")
    assert [n for n in FUSED_EXPERTS if forward_source(n) != reference] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_linearized_experts_compute_what_the_fused_ones_compute(family):
    model = FAMILIES[family]()
    inputs = F.text_inputs(seed=1)
    ref = logits(model, inputs)
    names = select(model, *default_patterns(find_parts(model)))
    assert type(model.model.layers[0].mlp.experts).__name__ in FUSED_EXPERTS  # selecting changes nothing
    assert unfuse_experts(model, names) == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    experts = model.model.layers[1].mlp.experts
    assert isinstance(experts, LinearExperts) and experts.num_experts == EXPERTS
    assert experts.gate_up_proj[0].weight.shape == (64, 64) and experts.down_proj[0].weight.shape == (64, 32)
    torch.testing.assert_close(logits(model, inputs), ref, rtol=1e-5, atol=1e-5)


def test_untargeted_experts_stay_fused_and_a_partly_compressed_module_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    model = qwen3_moe()
    names = select(model, ["re:model\\.layers\\.0\\."], ["model.layers.0.mlp.experts.down_proj.2"])
    compress_model(model, method("rtn"), names, [])
    layer0, layer1 = (layer.mlp.experts for layer in model.model.layers)
    assert isinstance(layer0, LinearExperts) and type(layer1).__name__ == "Qwen3MoeExperts"
    assert type(layer0.down_proj[2]) is torch.nn.Linear and isinstance(layer0.down_proj[1], CompressedLinear)
    inputs = F.text_inputs(seed=5)
    out = save_compressed(model, tmp_path / "q", quantization_config(model, "rtn", {}, ["x"], []))
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded.model.layers[0].mlp.experts.down_proj[2]) is torch.nn.Linear
    assert type(loaded.model.layers[1].mlp.experts).__name__ == "Qwen3MoeExperts"
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs))


# --- selection ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_selection_takes_every_expert_and_leaves_the_router(family):
    model = FAMILIES[family]()
    parts = find_parts(model)
    targets, ignore = default_patterns(parts)
    names = select(model, targets, ignore)
    experts = [n for n in names if ".experts." in n]
    assert len(experts) == 2 * 2 * EXPERTS and "model.layers.1.mlp.experts.down_proj.3" in experts
    assert not any(n.endswith("mlp.gate") for n in names)
    count = count_selected(model, names)
    assert (count.layers, count.expert_layers, count.experts_modules) == (len(names), 16, 2)
    assert count.expert_weights == 2 * EXPERTS * (64 * 64 + 64 * 32)
    assert count.weights / decoder_weights(model) > 0.99
    assert "16 expert linears of 2 MoE experts modules" in count.describe()
    # the experts module by exact name or class: all its expert linears; ignore one of them
    one = select(model, ["model.layers.0.mlp.experts"], ["model.layers.0.mlp.experts.down_proj.2"])
    assert len(one) == 2 * EXPERTS - 1 and all(n.startswith("model.layers.0.mlp.experts.") for n in one)
    assert len(select(model, [type(model.model.layers[0].mlp.experts).__name__])) == 16
    assert len(select(model, ["Linear"], ["re:.*experts"])) == 2 * 4 + 1  # attention + the LM head


def test_linear_routers_stay_dense_by_default():
    """PhiMoE's router is an nn.Linear subclass: the default patterns leave it out."""
    from transformers import PhimoeConfig, PhimoeForCausalLM

    model = PhimoeForCausalLM(PhimoeConfig(**F.TEXT, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)).eval()
    parts = find_parts(model)
    assert parts.routers == ("model.layers.0.mlp.router", "model.layers.1.mlp.router")
    targets, ignore = default_patterns(parts)
    names = select(model, targets, ignore)
    assert not any(n.endswith(".router") for n in names) and len([n for n in names if ".experts." in n]) == 16


def test_expert_statistics_come_from_the_routed_rows_split_by_modality():
    from llava_fa.calibration.experts import BlockExperts
    from llava_fa.calibration.stats import StatsCollector

    model = qwen3_moe()
    names = [f"model.layers.0.mlp.experts.{p}.{e}" for p in ("gate_up_proj", "down_proj") for e in range(EXPERTS)]
    unfuse_experts(model, names)
    experts = model.model.layers[0].mlp.experts
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 64, generator=g)
    index = torch.stack([torch.randperm(EXPERTS, generator=g)[:TOP_K] for _ in range(10)])
    weights = torch.full((10, TOP_K), 0.5)
    mask = torch.tensor([[True] * 3 + [False] * 7])
    block = BlockExperts(model, names)
    with StatsCollector({n: model.get_submodule(n) for n in names}, {"xtx"}) as collector, block.observing(collector):
        collector.new_sample(mask)
        experts(hidden, index, weights)
    assert collector.image_mask is mask and block.tokens_in == {"model.layers.0.mlp.experts": 10}
    for e in range(EXPERTS):
        routed = (index == e).any(-1)
        image, text = hidden[routed & mask[0]], hidden[routed & ~mask[0]]
        st = collector.stats[f"model.layers.0.mlp.experts.gate_up_proj.{e}"]
        assert st.tokens == {"image": len(image), "text": len(text)}
        torch.testing.assert_close(st.xtx["image"], image.T @ image)
        torch.testing.assert_close(st.xtx["text"], text.T @ text)
        assert collector.stats[f"model.layers.0.mlp.experts.down_proj.{e}"].tokens == st.tokens


def test_fused_experts_without_a_layout_are_reported_dense(caplog):
    """GPT-OSS stores its experts transposed with biases and a clamped gate: no layout, so not
    selected, and said so instead of leaving them out silently."""
    from transformers import GptOssConfig, GptOssForCausalLM

    from llava_fa.pipeline.planning import warn_dense_experts
    from llava_fa.selection import dense_fused_weights

    cfg = GptOssConfig(**dict(F.TEXT, intermediate_size=32), head_dim=16, num_local_experts=EXPERTS,
                       num_experts_per_tok=TOP_K)
    model = GptOssForCausalLM(cfg).eval()
    parts = find_parts(model)
    assert not [n for n in select(model, *default_patterns(parts)) if ".experts" in n]
    assert dense_fused_weights(model, parts.layers) == {"GptOssExperts": 2 * EXPERTS * 64 * 32 * 3}
    with caplog.at_level(logging.WARNING, logger="llava_fa"):
        warn_dense_experts(model, parts)
    assert "fused MoE experts of GptOssExperts (49,152 weights) stay dense" in caplog.text


# --- compression end to end -----------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_compress_save_load_generate(tmp_path, family, name):
    from transformers import AutoModelForCausalLM

    model = FAMILIES[family]()
    total = decoder_weights(model)
    inputs = F.text_inputs(seed=5)
    dense = logits(model, inputs)
    names = select(model, *default_patterns(find_parts(model)))
    samples = [F.text_inputs(seed=s) for s in range(2)]
    rows = compress_model(model, method(name), names, samples)
    experts = [r for r in rows if r.experts is not None]
    assert len(experts) == 16 and {r.experts for r in experts} == {f"model.layers.{i}.mlp.experts" for i in range(2)}
    assert sum(r.in_features * r.out_features for r in rows if r.name.startswith("model.layers.")) / total > 0.99
    if name != "rtn":  # statistics from the routed tokens: each token reaches top_k experts per layer
        per_layer = {i: sum(r.routed_tokens for r in experts if r.experts == f"model.layers.{i}.mlp.experts"
                            and ".gate_up_proj." in r.name) for i in range(2)}
        assert per_layer == {0: TOP_K * 32, 1: TOP_K * 32}
    compressed = logits(model, inputs)
    assert relative(compressed, dense) < 0.02  # 8 bits: ~0.5% per layer (rel_error), two layers
    qc = quantization_config(model, name, method(name).config.to_dict(), ["Linear"], [])
    assert len([n for n in qc.modules if ".experts." in n]) == 16
    out = save_compressed(model, tmp_path / "q", qc)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(loaded.model.layers[1].mlp.experts, LinearExperts)
    assert isinstance(loaded.model.layers[1].mlp.experts.down_proj[3], CompressedLinear)
    torch.testing.assert_close(logits(loaded, inputs), compressed)
    generated = loaded.generate(inputs["input_ids"], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 20)


def test_an_expert_without_tokens_takes_the_pooled_statistics(caplog):
    model = qwen3_moe()
    ban_expert(model, 3)
    inputs = F.text_inputs(seed=5)
    dense = logits(model, inputs)
    names = select(model, *default_patterns(find_parts(model)))
    with caplog.at_level(logging.WARNING, logger="llava_fa"):
        rows = compress_model(model, method("gptq"), names, [F.text_inputs(seed=s) for s in range(2)])
    pooled = {r.name for r in rows if r.pooled_stats}
    assert pooled == {f"model.layers.{i}.mlp.experts.{p}.3" for i in range(2) for p in ("gate_up_proj", "down_proj")}
    assert all(r.routed_tokens == 0 for r in rows if r.pooled_stats)
    warned = [r.message for r in caplog.records if "expert linears received fewer than" in r.message]
    assert len(warned) == 2 and all(w.startswith("2 of 8 expert linears") for w in warned)  # per layer, before
    assert relative(logits(model, inputs), dense) < 0.02
    from llava_fa.pipeline import summarize

    summary = summarize(rows)["experts"]
    assert summary["layers"] == 16 and summary["pooled_stats"] == 4 and summary["without_tokens"] == 4


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_compress_checkpoint_of_an_moe_model(tmp_path, family, name):
    from transformers import AutoModelForCausalLM

    model = FAMILIES[family]()
    model.save_pretrained(tmp_path / "dense")
    F.tokenizer().save_pretrained(tmp_path / "dense")
    inputs = F.text_inputs(seed=5)
    dense = logits(model, inputs)
    messages = []
    recipe = Recipe(method=name, options=METHODS[name],
                    calibration=Calibration(source="builtin", nsamples=4, seqlen=32))
    report = compress_checkpoint(tmp_path / "dense", recipe, tmp_path / "q", on_info=messages.append)
    assert any("16 expert linears of 2 MoE experts modules" in m for m in messages)
    summary = report["summary"]
    assert summary["experts"]["layers"] == 16 and summary["experts"]["weights"] == 2 * EXPERTS * (64 * 64 + 64 * 32)
    assert summary["weights"] / decoder_weights(model) > 0.99
    assert summary["bpw"] == summary["storage_bits"] / summary["weights"]  # the experts' bits and weights included
    assert len([r for r in report["layers"] if r["experts"]]) == 16
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert "model.layers.0.mlp.experts.gate_up_proj.0" in config["modules"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    assert relative(logits(loaded, inputs), dense) < 0.02
    assert loaded.generate(inputs["input_ids"], max_new_tokens=4, do_sample=False).shape == (1, 20)


def test_a_resumed_run_loads_the_experts_from_the_work_dir(tmp_path):
    names = select(qwen3_moe(), *default_patterns(find_parts(qwen3_moe())))
    samples = [F.text_inputs(seed=s) for s in range(2)]
    first, second = qwen3_moe(), qwen3_moe()
    rows = compress_model(first, method("gptq"), names, samples, work_dir=tmp_path / "work", fingerprint="moe")
    again = compress_model(second, method("gptq"), names, samples, work_dir=tmp_path / "work", fingerprint="moe")
    assert [r.to_dict() for r in again] == [r.to_dict() for r in rows]  # every block loaded, expert fields kept
    inputs = F.text_inputs(seed=5)
    torch.testing.assert_close(logits(second, inputs), logits(first, inputs))
