"""Per-layer allocation of bits under a global budget: the error model and its solver.

Error model (HIGGS's linearity theorem, arXiv 2411.17525): the loss increase of a compressed
model is about sum_l alpha_l * t_l, where t_l = ||W_l - W_hat_l||_F^2 / ||W_l||_F^2 is layer l's
relative weight error under the option set it gets, and alpha_l the layer's sensitivity
(sensitivity.py measures both). Choosing one candidate option set per layer so that the stored
bits fit the budget and sum_l alpha_l t_l is least is a multiple-choice knapsack; `solve` runs a
dynamic programme over exact bit costs that keeps the Pareto front (cost, error) after each layer.
The front is exact while it stays under `max_front` points; beyond, it keeps the best point of each
cost bucket, so the answer may be a hair from optimal, but its bits are always counted exactly and
never exceed the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from llava_fa.errors import ConfigError

SENSITIVITIES = ("data-free", "calibrated")


@dataclass(frozen=True)
class Candidate:
    """One option set a layer may get: `label` as the user wrote it, `options` its overrides."""

    label: str
    options: dict[str, Any] = field(hash=False)


def parse_candidates(text: str) -> list[Candidate]:
    """`"bits=2;bits=3"` or `"mag_bits=2,phase_bits=4;mag_bits=3,phase_bits=4"`: candidates apart by
    `;`, a candidate's options apart by `,`. Values stay strings; build_config converts and checks them."""
    candidates, seen = [], set()
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        options = {}
        for item in (i.strip() for i in part.split(",")):
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ConfigError(f"--candidates: {item!r} in {part!r} is not KEY=VALUE. Fix: write candidates "
                                  f"as \"bits=2;bits=3;bits=4\" (';' between candidates, ',' between a "
                                  f"candidate's options)")
            options[key.strip().replace("-", "_")] = value.strip()
        label = ",".join(f"{k}={v}" for k, v in options.items())
        if label in seen:
            raise ConfigError(f"--candidates: {label!r} is given twice")
        seen.add(label)
        candidates.append(Candidate(label, options))
    if len(candidates) < 2:
        raise ConfigError(f"--candidates needs at least two option sets to choose from, got {len(candidates)}. "
                          f"Fix: e.g. --candidates \"bits=2;bits=3;bits=4\"")
    return candidates


@dataclass
class LayerCosts:
    """What each candidate costs one layer: its stored bits and relative error t; the layer's alpha."""

    name: str
    weights: int  # out_features * in_features: the layer's share of the bpw denominator
    bits: list[int]  # stored bits per candidate (every stored bit, as the compress report counts them)
    errors: list[float]  # t per candidate
    alpha: float = 1.0

    def loss(self, k: int) -> float:
        return self.alpha * self.errors[k]


@dataclass
class Allocation:
    """The chosen candidate (index) of each layer, and what the choice costs in total."""

    choice: dict[str, int]
    storage_bits: int
    weights: int
    loss: float  # sum of alpha * t: the estimated loss increase

    @property
    def bpw(self) -> float:
        return self.storage_bits / self.weights


def budget_bits(budget: float, weights: int) -> int:
    """The most stored bits whose bpw, bits / weights as the report computes it (a float division),
    is <= `budget`: so a budget equal to a plan's reported bpw admits that plan."""
    bits = math.floor(Fraction(float(budget)) * weights)
    while (bits + 1) / weights <= budget:  # at most a step or two either way: float rounding only
        bits += 1
    while bits > 0 and bits / weights > budget:
        bits -= 1
    return bits


def evaluate(layers: list[LayerCosts], choice: dict[str, int]) -> Allocation:
    return Allocation(dict(choice), sum(lay.bits[choice[lay.name]] for lay in layers),
                      sum(lay.weights for lay in layers), sum(lay.loss(choice[lay.name]) for lay in layers))


def uniform(layers: list[LayerCosts], k: int) -> Allocation:
    """Every layer at candidate k: the plan a budget is usually compared with."""
    return evaluate(layers, {lay.name: k for lay in layers})


def check_budget(bits: list[list[int]], weights: list[int], budget: float, labels: list[str]) -> None:
    """ConfigError unless the budget lies between every layer at its cheapest candidate and every
    layer at its dearest: below, nothing fits; above, there is nothing to choose (all dearest)."""
    total = sum(weights)
    cheapest = sum(min(b) for b in bits) / total
    dearest = sum(max(b) for b in bits) / total
    if not budget > 0 or not math.isfinite(budget):
        raise ConfigError(f"--budget must be a positive number of bits per weight, got {budget}")
    if budget_bits(budget, total) < sum(min(b) for b in bits):
        raise ConfigError(f"--budget {budget} bpw is below the cheapest plan, {cheapest:.4f} bpw (every layer at its "
                          f"cheapest candidate, e.g. {labels[_cheapest(bits)]}). Fix: raise the budget to at least "
                          f"{math.ceil(cheapest * 1e4) / 1e4}, or add a cheaper candidate")
    if budget > dearest:
        raise ConfigError(f"--budget {budget} bpw is above the dearest plan, {dearest:.4f} bpw (every layer at its "
                          f"dearest candidate, e.g. {labels[_dearest(bits)]}): there is nothing to allocate. Fix: "
                          f"lower the budget to at most {math.floor(dearest * 1e4) / 1e4}, or add a dearer candidate")


def _cheapest(bits: list[list[int]]) -> int:
    return int(np.argmin(np.sum(np.asarray(bits, dtype=np.float64), axis=0)))


def _dearest(bits: list[list[int]]) -> int:
    return int(np.argmax(np.sum(np.asarray(bits, dtype=np.float64), axis=0)))


def solve(layers: list[LayerCosts], budget: float, max_front: int = 20000) -> Allocation:
    """The choice of least sum(alpha * t) whose stored bits fit `budget` bpw (see the module doc).

    Costs are counted above each layer's cheapest candidate, so any partial choice within the
    slack can still be completed (the remaining layers at their cheapest). Ties in error go to
    the cheaper choice: a layer whose alpha is 0 stays at its cheapest candidate."""
    total = sum(lay.weights for lay in layers)
    base = [min(lay.bits) for lay in layers]
    slack = budget_bits(budget, total) - sum(base)
    if slack < 0:
        raise ConfigError(f"budget {budget} bpw is below the cheapest plan")
    cost, err = np.zeros(1, dtype=np.int64), np.zeros(1)
    trail = []  # per layer: (candidate, parent index) of each front point
    for lay, b0 in zip(layers, base):
        extra = np.asarray(lay.bits, dtype=np.int64) - b0
        loss = np.asarray([lay.loss(k) for k in range(len(lay.bits))], dtype=np.float64)
        cost, err, keep = _extend(cost, err, extra, loss, slack, max_front)
        trail.append(keep)
    best = int(np.argmin(err))  # first minimum: on the front sorted by cost, the cheapest of equal errors
    choice = {}
    for lay, (cand, parent) in zip(reversed(layers), reversed(trail)):
        choice[lay.name] = int(cand[best])
        best = int(parent[best])
    return _no_worse_than_uniform(layers, evaluate(layers, choice), budget)


def _extend(cost: np.ndarray, err: np.ndarray, extra: np.ndarray, loss: np.ndarray, slack: int, max_front: int):
    """The Pareto front after one more layer: every (front point, candidate) pair within the slack,
    dominated pairs dropped. Returns (cost, err, (candidate, parent) of each kept point)."""
    k = len(extra)
    new_cost = (cost[None, :] + extra[:, None]).ravel()
    new_err = (err[None, :] + loss[:, None]).ravel()
    cand = np.repeat(np.arange(k), len(cost))
    parent = np.tile(np.arange(len(cost)), k)
    fits = new_cost <= slack
    new_cost, new_err, cand, parent = new_cost[fits], new_err[fits], cand[fits], parent[fits]
    order = np.lexsort((new_err, new_cost))  # by cost, then error
    new_cost, new_err, cand, parent = new_cost[order], new_err[order], cand[order], parent[order]
    # Keep a point only if it is strictly better than every cheaper (or equally cheap, earlier) one.
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(new_err)[:-1]))
    keep = new_err < best_before
    new_cost, new_err, cand, parent = new_cost[keep], new_err[keep], cand[keep], parent[keep]
    if len(new_cost) > max_front:
        # Thin to one point per cost bucket: the last (least error) one, its real cost kept.
        bucket = new_cost * max_front // (slack + 1)
        last = np.r_[bucket[1:] != bucket[:-1], True]
        new_cost, new_err, cand, parent = new_cost[last], new_err[last], cand[last], parent[last]
    return new_cost, new_err, (cand, parent)


def _no_worse_than_uniform(layers: list[LayerCosts], plan: Allocation, budget: float) -> Allocation:
    """A thinned front can lose the uniform plans; never answer worse than a uniform plan that fits."""
    limit = budget_bits(budget, plan.weights)
    for k in range(len(layers[0].bits)):
        flat = uniform(layers, k)
        if flat.storage_bits <= limit and flat.loss < plan.loss:
            plan = flat
    return plan


# --- the plan as a recipe ---------------------------------------------------------------------------

def plan_recipe(recipe, candidates: list[Candidate], layers: list[LayerCosts], plan: Allocation, budget: float,
                sensitivity: str, noise: float | None) -> dict[str, Any]:
    """The recipe `llava-fa compress --recipe` applies: the most chosen candidate as `options`, the
    other layers in `layer_options`, and under `allocation` what each layer got and why."""
    counts = np.bincount(list(plan.choice.values()), minlength=len(candidates))
    common = int(np.argmax(counts))
    out = recipe.to_dict()
    out["options"] = {**recipe.options, **candidates[common].options}
    out["layer_options"] = {lay.name: dict(candidates[plan.choice[lay.name]].options) for lay in layers
                            if plan.choice[lay.name] != common}
    rows = {}
    for lay in layers:
        k = plan.choice[lay.name]
        rows[lay.name] = {"choice": candidates[k].label, "storage_bits": lay.bits[k],
                          "bpw": round(lay.bits[k] / lay.weights, 6), "t": lay.errors[k], "alpha": lay.alpha}
    flats = {c.label: {"bpw": round(u.bpw, 6), "loss": u.loss}
             for c, u in ((c, uniform(layers, i)) for i, c in enumerate(candidates))}
    out["allocation"] = {"budget_bpw": budget, "bpw": round(plan.bpw, 6), "storage_bits": plan.storage_bits,
                         "weights": plan.weights, "estimated_loss": plan.loss, "sensitivity": sensitivity,
                         "noise_t": noise, "candidates": [c.label for c in candidates],
                         "layers_per_candidate": {c.label: int(n) for c, n in zip(candidates, counts)},
                         "uniform": flats, "layers": rows}
    return out
