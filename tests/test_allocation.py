"""Per-layer allocation of bits under a budget (pipeline/allocation.py, pipeline/sensitivity.py,
`llava-fa allocate`) and the recipe's `layer_options` that apply the plan."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
import yaml

import compress_fixtures as F
from llava_fa.errors import ConfigError
from llava_fa.io.files import tensor_digests
from llava_fa.pipeline import compress_checkpoint
from llava_fa.pipeline.allocation import (LayerCosts, budget_bits, check_budget, parse_candidates, solve,
                                          uniform)
from llava_fa.pipeline.sensitivity import SensitivityConfig, calibrated_alphas
from llava_fa.recipe import Calibration, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

GPTQ_ARGS = ("--method", "gptq", "-O", "group_size=32", "--candidates", "bits=2;bits=3;bits=4", "--calib", "builtin",
             "--nsamples", "2", "--seqlen", "16", "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return F.save_llama_dir(tmp_path_factory.mktemp("dense") / "llama")


# --- the solver ------------------------------------------------------------------------------------

def random_layers(rng: random.Random, n: int, k: int = 3, alpha: bool = True) -> list[LayerCosts]:
    """Layers of several sizes; more bits, less error (as for bit widths), alpha random or 1."""
    layers = []
    for i in range(n):
        weights = rng.choice([64, 128, 256, 512])
        bits = sorted(weights * b + rng.randrange(0, 40) for b in rng.sample(range(1, 9), k))
        errors = sorted((rng.random() for _ in range(k)), reverse=True)
        layers.append(LayerCosts(f"l{i}", weights, bits, errors, rng.random() * 3 if alpha else 1.0))
    return layers


def brute_force(layers: list[LayerCosts], budget: float) -> float:
    limit = budget_bits(budget, sum(lay.weights for lay in layers))
    best = float("inf")
    for combo in itertools.product(*(range(len(lay.bits)) for lay in layers)):
        if sum(lay.bits[k] for lay, k in zip(layers, combo)) <= limit:
            best = min(best, sum(lay.loss(k) for lay, k in zip(layers, combo)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_solver_is_optimal_and_never_exceeds_the_budget(seed):
    rng = random.Random(seed)
    layers = random_layers(rng, 6)
    total = sum(lay.weights for lay in layers)
    low = sum(min(lay.bits) for lay in layers) / total
    high = sum(max(lay.bits) for lay in layers) / total
    for budget in (low + (high - low) * f + 1e-9 for f in (0.0, 0.13, 0.5, 0.77, 1.0)):
        plan = solve(layers, budget)
        assert plan.storage_bits <= budget_bits(budget, total) and plan.bpw <= budget
        assert plan.loss == pytest.approx(brute_force(layers, budget), rel=1e-12)


def test_a_thinned_front_still_fits_the_budget():
    layers = random_layers(random.Random(7), 40)
    total = sum(lay.weights for lay in layers)
    budget = (sum(min(lay.bits) for lay in layers) + sum(max(lay.bits) for lay in layers)) / 2 / total
    exact, thin = solve(layers, budget), solve(layers, budget, max_front=16)
    assert thin.storage_bits <= budget_bits(budget, total)
    assert exact.loss <= thin.loss <= exact.loss * 1.2


def test_a_layer_of_zero_sensitivity_gets_the_cheaper_candidate():
    cheap_and_free = LayerCosts("a", 100, [200, 400], [0.5, 0.1], alpha=0.0)
    sensitive = LayerCosts("b", 100, [200, 400], [0.5, 0.1], alpha=1.0)
    for budget in (3.0, 4.0):  # room for one layer at 4 bits, then for both
        plan = solve([cheap_and_free, sensitive], budget)
        assert plan.choice == {"a": 0, "b": 1}


def test_equal_alpha_at_a_uniform_cost_is_no_worse_than_uniform():
    # A wide layer gains little from 4 bits, a narrow one much: moving bits is worth it.
    layers = [LayerCosts("wide", 1000, [3000, 4000, 2000], [0.10, 0.09, 0.30]),
              LayerCosts("narrow", 100, [300, 400, 200], [0.50, 0.05, 0.90])]
    three = uniform(layers, 0)
    plan = solve(layers, three.bpw)
    assert plan.storage_bits <= three.storage_bits and plan.loss < three.loss
    for seed in range(5):  # and never worse, whatever the numbers
        layers = random_layers(random.Random(100 + seed), 8, alpha=False)
        for k in range(3):
            flat = uniform(layers, k)
            assert solve(layers, flat.bpw).loss <= flat.loss + 1e-12


def test_budget_outside_the_candidates_is_refused():
    bits, weights, labels = [[200, 300], [20, 30]], [100, 10], ["bits=2", "bits=3"]
    check_budget(bits, weights, 2.5, labels)
    with pytest.raises(ConfigError, match="below the cheapest plan, 2.0000 bpw .*bits=2"):
        check_budget(bits, weights, 1.99, labels)
    with pytest.raises(ConfigError, match="above the dearest plan, 3.0000 bpw .*bits=3"):
        check_budget(bits, weights, 3.01, labels)


@pytest.mark.parametrize("text,message", [("bits=2", "at least two"), ("bits=2;bits", "not KEY=VALUE"),
                                          ("bits=2;bits=2", "given twice"), ("bits=2;=3", "not KEY=VALUE")])
def test_bad_candidates(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_candidates(text)


def test_candidates_parse():
    got = parse_candidates("mag_bits=2, phase_bits=4; mag-bits=3,phase_bits=4;")
    assert [c.label for c in got] == ["mag_bits=2,phase_bits=4", "mag_bits=3,phase_bits=4"]
    assert got[1].options == {"mag_bits": "3", "phase_bits": "4"}


# --- sensitivity -------------------------------------------------------------------------------------

def test_calibrated_alpha_ranks_the_layer_that_matters_more_higher():
    model = F.llama()
    with torch.no_grad():  # layer 0's MLP barely reaches the residual stream, layer 1's dominates it
        model.model.layers[0].mlp.down_proj.weight.mul_(0.02)
        model.model.layers[1].mlp.down_proj.weight.mul_(5.0)
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    samples = [F.text_inputs(seed=s) for s in range(3)]
    config = SensitivityConfig("calibrated", noise=0.01, samples=2)
    alphas = calibrated_alphas(model, names, samples, config, torch.device("cpu"))
    assert alphas[names[1]] > 20 * alphas[names[0]] > 0
    assert calibrated_alphas(model, names, samples, config, torch.device("cpu")) == alphas  # seeded
    before = model.model.layers[1].mlp.down_proj.weight.clone()
    calibrated_alphas(model, names[1:2], samples, config, torch.device("cpu"))
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, before)  # the weight is restored


# --- the plan through `llava-fa allocate` and `llava-fa compress` ------------------------------------

@pytest.mark.parametrize("sensitivity", ["data-free", "calibrated"])
def test_plan_round_trips_through_compress(run, llama_dir, tmp_path, sensitivity):
    plan_file = tmp_path / "plan.yaml"
    code, _, err = run("allocate", llama_dir, "--budget", "3.3", "--out", plan_file, "--sensitivity", sensitivity,
                       *GPTQ_ARGS)
    assert code == 0, err
    plan = yaml.safe_load(plan_file.read_text())
    alloc = plan["allocation"]
    assert len(alloc["layers"]) == 14 and alloc["bpw"] <= 3.3 and alloc["sensitivity"] == sensitivity
    chosen = {row["choice"] for row in alloc["layers"].values()}
    assert len(chosen) >= 2  # a budget between the candidates mixes them
    alphas = {row["alpha"] for row in alloc["layers"].values()}
    assert (alphas == {1.0}) == (sensitivity == "data-free")

    out = tmp_path / "q"
    code, _, err = run("compress", llama_dir, "--recipe", plan_file, "--out", out, "--device", "cpu", "--quiet")
    assert code == 0, err
    report = json.loads((out / "compress_report.json").read_text())
    modules = json.loads((out / "config.json").read_text())["quantization_config"]["modules"]
    for row in report["layers"]:
        planned = alloc["layers"][row["name"]]
        assert row["storage_bits"] == planned["storage_bits"], row["name"]
        assert f"bits={modules[row['name']]['params']['bits']}" == planned["choice"]
    assert report["summary"]["bpw"] == pytest.approx(alloc["bpw"], abs=1e-6) and report["summary"]["bpw"] <= 3.3


def test_layer_options_stream_like_the_whole_model(llama_dir, tmp_path):
    recipe = Recipe(method="gptq", options={"bits": 3, "group_size": 32},
                    layer_options={"model.layers.0.mlp.down_proj": {"bits": 2}, "model.layers.1.self_attn.q_proj":
                                   {"bits": 4, "act_order": True}},
                    calibration=Calibration(source="builtin", nsamples=2, seqlen=16))
    whole = compress_checkpoint(llama_dir, recipe, tmp_path / "whole", stream=False)
    compress_checkpoint(llama_dir, recipe, tmp_path / "streamed")
    assert tensor_digests(tmp_path / "whole") == tensor_digests(tmp_path / "streamed")
    bpw = {row["name"]: row["bpw"] for row in whole["layers"]}
    assert bpw["model.layers.0.mlp.down_proj"] < bpw["model.layers.0.mlp.up_proj"] < \
        bpw["model.layers.1.self_attn.q_proj"]
    assert whole["layer_options"] == recipe.layer_options


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (("--method", "nosuch", "--candidates", "bits=2;bits=3", "--budget", "3"), "unknown method 'nosuch'"),
    (("--method", "gptq", "--candidates", "bits=2;bits=3", "--budget", "1.5"), "below the cheapest plan"),
    (("--method", "gptq", "--candidates", "bits=2;bits=3", "--budget", "3.9"), "above the dearest plan"),
    (("--method", "gptq", "--candidates", "bitz=2;bitz=3", "--budget", "3"), "candidate 'bitz=2'.*no option 'bitz'"),
    (("--method", "gptq", "--candidates", "bits=2;bits=3", "--budget", "3", "--sensitivity", "magic"),
     "data-free or calibrated"),
    (("--method", "gptq", "--candidates", "bits=2", "--budget", "3"), "at least two"),
])
def test_allocate_bad_input(run, llama_dir, tmp_path, args, message):
    code, _, err = run("allocate", llama_dir, "--out", tmp_path / "plan.yaml", "-O", "group_size=32", "--calib",
                       "builtin", "--nsamples", "2", "--seqlen", "16", "--device", "cpu", "--quiet", *args)
    assert code == 2 and "Traceback" not in err
    assert message.split(".*")[0] in err and __import__("re").search(message, err), err
    assert not (tmp_path / "plan.yaml").exists()


@pytest.mark.parametrize("layer_options,message", [
    ({"model.layers.0.mlp.down_proj": {"bitz": 4}}, r"layer_options\[model.layers.0.mlp.down_proj\]: .*'bitz'"),
    ({"model.layers.0.mlp.down_prj": {"bits": 4}}, "does not select, first 'model.layers.0.mlp.down_prj' "
                                                   r"\(did you mean model.layers.0.mlp.down_proj\?\)"),
    ({"model.layers.0.mlp.down_proj": 4}, r"layer_options\[model.layers.0.mlp.down_proj\] must be a mapping"),
    ([1, 2], "'layer_options' must be a mapping"),
])
def test_compress_rejects_bad_layer_options(run, llama_dir, tmp_path, layer_options, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"method": "rtn", "options": {"group_size": 32},
                                      "layer_options": layer_options, "calibration": {"nsamples": 0}}))
    code, _, err = run("compress", llama_dir, "--recipe", recipe, "--out", tmp_path / "q", "--quiet")
    assert code == 2 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "q").exists()


def test_recipe_layer_options_round_trip():
    d = {"method": "gptq", "options": {"bits": 3}, "layer_options": {"a.b": {"bits": 4}}, "allocation": {"x": 1}}
    rec = Recipe.from_dict(d)
    assert rec.layer_options == {"a.b": {"bits": 4}} and Recipe.from_dict(rec.to_dict()) == rec
    with pytest.raises(ConfigError, match="'allocation' must be a mapping"):
        Recipe.from_dict({**d, "allocation": 3})
