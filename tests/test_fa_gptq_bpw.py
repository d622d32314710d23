"""`fa-gptq -O bpw=B`: each layer gets the costliest measured form that fits B, every stored bit counted."""

import json
from pathlib import Path

import pytest
import torch

from llava_fa.errors import ConfigError
from llava_fa.formats.fourier_layout import Layout
from llava_fa.methods import LayerStats, build_config, get_method
from llava_fa.methods.base import describe_method
from llava_fa.methods.fa_gptq.budget import FORMS
from llava_fa.methods.presets import BOUNDED_PRESETS, BOUNDED_RECORDS, PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parents[1]


def _problem(m=32, n=128, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g) * 0.02
    x = torch.randn(tokens, n // 4, generator=g) @ torch.randn(n // 4, n, generator=g)
    x = x + 0.1 * torch.randn(tokens, n, generator=g)
    return W, LayerStats(n, xtx={"text": x.T @ x}, tokens={"text": tokens, "image": 0})


def _compress(W, stats, **opts):
    return get_method("fa-gptq")(build_config("fa-gptq", opts)).compress(W, stats)


def _form(layer):
    p = layer.params()
    return p["mag_bits"], p["phase_bits"], p["group_size"]


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def form_bpw(problem):
    """Stored bpw of each table form on the synthetic layer, from the compressed layer's own count."""
    W, stats = problem
    out = {}
    for f in FORMS:
        layer = _compress(W, stats, axis="input", mag_bits=f.mag_bits, phase_bits=f.phase_bits,
                          group_size=f.group_size)
        out[(f.mag_bits, f.phase_bits, f.group_size)] = layer.bits_per_weight()
    return out


def test_the_table_is_ordered_by_cost_and_measured(form_bpw):
    costs = [form_bpw[(f.mag_bits, f.phase_bits, f.group_size)] for f in FORMS]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    for f in FORMS:  # every entry names the record it was measured in
        assert (ROOT / BOUNDED_RECORDS / f.record).is_file(), f.record


@pytest.mark.parametrize("pick", range(len(FORMS)))
def test_bpw_picks_the_costliest_form_that_fits(problem, form_bpw, pick):
    """Targets just at, and between, the forms' costs: the chosen layer stores at most the target and is
    the costliest form of the table that does (its bpw read from the compressed layer itself)."""
    W, stats = problem
    f = FORMS[pick]
    cost = form_bpw[(f.mag_bits, f.phase_bits, f.group_size)]
    nxt = min([c for c in form_bpw.values() if c > cost], default=cost + 1.0)
    for target in (cost, (cost + nxt) / 2):
        layer = _compress(W, stats, axis="input", bpw=target)
        reachable = [c for c in form_bpw.values() if c <= target]
        assert layer.bits_per_weight() <= target
        assert layer.bits_per_weight() == max(reachable)
        assert _form(layer) == (f.mag_bits, f.phase_bits, f.group_size), target
    # just below its cost: the next cheaper form (or none, tested below)
    if pick:
        below = get_method("fa-gptq")(build_config("fa-gptq", {"axis": "input", "bpw": cost - 1e-4}))
        prev = FORMS[pick - 1]
        assert below.config.layer_params(*W.shape)["phase_bits"] == prev.phase_bits


def test_bpw_on_the_output_axis_counts_its_own_layout(problem):
    W, stats = problem
    layer = _compress(W, stats, axis="output", bpw=3.2)
    assert layer.mode == "rfft_out" and layer.bits_per_weight() <= 3.2
    assert _form(layer) == (2, 4, 64)


def test_cli_option_bpw_3_2_gives_the_2_4_form_in_groups_of_64():
    """`-O axis=input -O bpw=3.2` as the command line passes it (strings, through build_recipe and
    build_config): PolarQuant 2+4 in groups of 64, the measured 3.136-bpw form, on a 576x576 layer."""
    from llava_fa.commands.compress import build_recipe

    rec = build_recipe(None, "fa-gptq", {}, ["axis=input", "bpw=3.2"], (), (), None, None, None, None, None, None)
    assert rec.options == {"axis": "input", "bpw": "3.2"}
    cfg = build_config(rec.method, rec.options)
    assert cfg.bpw == 3.2
    p = cfg.layer_params(576, 576)
    assert (p["mag_bits"], p["phase_bits"], p["group_size"], p["transform"]) == (2, 4, 64, "rfft")
    assert Layout(576, 576, p).storage_bits() / 576 ** 2 <= 3.2


@pytest.mark.parametrize("given", [{"mag_bits": 3}, {"phase_bits": 5}, {"mag_bits": 2, "phase_bits": 4},
                                   {"group_size": 32}])
def test_bpw_with_explicit_bits_is_a_conflict(given):
    with pytest.raises(ConfigError, match="bpw=3.2 picks.*" + next(iter(given))):
        build_config("fa-gptq", {"axis": "input", "bpw": "3.2", **given})


def test_without_bpw_the_defaults_are_unchanged(problem):
    cfg = build_config("fa-gptq")
    assert cfg.layer_params(*problem[0].shape)["mag_bits"] == 2
    p = cfg.layer_params()
    assert (p["mag_bits"], p["phase_bits"], p["group_size"], p["real_bits"]) == (2, 4, 64, 3)


def test_a_target_below_the_cheapest_form_says_what_is_reachable(problem, form_bpw):
    W, stats = problem
    cheapest = min(form_bpw.values())
    method = get_method("fa-gptq")(build_config("fa-gptq", {"axis": "input", "bpw": 2.5}))
    assert cheapest > 2.5
    with pytest.raises(ConfigError, match=r"below the cheapest measured form.*raise bpw to at least") as e:
        method.compress(W, stats)
    # names the cheapest bpw of this shape, rounded up so that the suggested target works
    need = float(str(e.value).split("at least ")[1].split(",")[0])
    assert cheapest <= need < cheapest + 0.001
    assert _compress(W, stats, axis="input", bpw=need).bits_per_weight() == cheapest
    with pytest.raises(ConfigError, match=r"layer model\.x"):  # found before any work starts
        method.check_layer("model.x", torch.nn.Linear(W.shape[1], W.shape[0]))
    with pytest.raises(ConfigError, match="bpw must be positive"):
        build_config("fa-gptq", {"bpw": 0})


# --- the presets of the bounded CPU evaluation ----------------------------------------------------

def test_bounded_presets_are_the_measured_records_layer_for_layer():
    """Each fa-gptq preset's options pick, for every one of the 210 decoder linears, a layer that stores
    exactly the bits its record reports; the figures are the record's, rounded."""
    assert "fa-gptq" not in PRESETS  # not mixed with the full-split H100 presets
    for p in BOUNDED_PRESETS["fa-gptq"]:
        assert p.evaluation == "bounded-cpu"
        rec = json.loads((ROOT / BOUNDED_RECORDS / p.run).read_text())
        cfg = build_config("fa-gptq", dict(p.options))
        modules = rec["size"]["compressed"]["modules"]
        assert len(modules) == 210
        for name, mod in modules.items():
            params = cfg.layer_params(mod["out_features"], mod["in_features"])
            assert Layout(mod["out_features"], mod["in_features"], params).storage_bits() == mod["bits"], name
        got = (rec["size"]["decoder_linear"]["bpw"], rec["perplexity"]["ppl"], rec["vqa"]["fast"]["accuracy"],
               rec["fidelity"]["kl"])
        assert rec["vqa"]["fast"]["n"] == 300 and rec["perplexity"]["windows"] == 4
        for mine, theirs, digits in zip((p.bpw, p.ppl, p.vqa, p.kl), got, (3, 2, 4, 3)):
            assert mine == round(theirs, digits), (p.run, mine, theirs)


def test_help_points_from_fa_to_the_best_measured_form():
    fa = describe_method("fa")
    assert "fa-gptq -O axis=input -O bpw=X" in fa
    assert "[fa4q_odccal]" in fa  # fa's own presets stay
    text = describe_method("fa-gptq")
    assert "bounded CPU evaluation" in text and "-O axis=input -O bpw=3.2" in text and "[fa_gptq_input.json]" in text
