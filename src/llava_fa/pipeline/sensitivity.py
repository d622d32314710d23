"""What `llava-fa allocate` measures on a model: each layer's relative error t under each candidate,
each layer's sensitivity alpha, and the plan that follows (allocation.py solves it).

t_l per candidate: the layer compressed by the method itself with that candidate's options and the
statistics the compress pipeline would give it (sequential.py: the calibration inputs propagated
through the earlier layers, which here are compressed with their most faithful candidate, the one
of least t, so each layer is seen near the original model as the linearity model assumes).
t_l = ||W - W_hat||_F^2 / ||W||_F^2, the weight error, in the same units as the noise of alpha.

alpha_l: `data-free`, 1 for every layer (the plan minimises the total relative error); or
`calibrated`, the KL(original || perturbed) of the next-token distributions on a few calibration
sequences when layer l alone gets Gaussian noise N with ||N||_F^2 = t ||W_l||_F^2, divided by t.
The noise is seeded by the calibration seed and the layer's name: the same command gives the same
numbers, and a layer's alpha does not depend on which other layers are selected.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from llava_fa.calibration.stats import LayerStats
from llava_fa.errors import ConfigError
from llava_fa.evaluation.fidelity import kl_per_position, scored_positions
from llava_fa.methods.base import Method, build_config, get_method
from llava_fa.pipeline.allocation import Candidate, LayerCosts, check_budget, plan_recipe, solve
from llava_fa.pipeline.devices import to_device

# on_progress(stage, layers done, layers in all)
Progress = Callable[[str, int, int], None]


def _quiet(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class SensitivityConfig:
    """How alpha is measured: `kind` data-free or calibrated; for calibrated, the relative MSE of the
    noise (`noise`, small enough that KL stays in its quadratic regime, large enough to rise above
    float32 round-off) and the number of calibration sequences (`samples`)."""

    kind: str = "data-free"
    noise: float = 0.01
    samples: int = 4
    seed: int = 0

    def check(self) -> None:
        if self.kind not in ("data-free", "calibrated"):
            raise ConfigError(f"--sensitivity must be data-free or calibrated, got {self.kind!r}")
        if not 0 < self.noise < 1:
            raise ConfigError(f"--noise must be in (0, 1) (a relative MSE, e.g. 0.01), got {self.noise}")
        if self.samples < 1:
            raise ConfigError(f"--sensitivity-samples must be >= 1, got {self.samples}")


# --- t per candidate ---------------------------------------------------------------------------------

def relative_error(weight: torch.Tensor, compressed) -> float:
    """t = ||W - W_hat||_F^2 / ||W||_F^2 in float64 (the sums of many small squares)."""
    w = weight.detach().double()
    diff = w - compressed.dequantize(torch.float32).to(w.device).double()
    return float(diff.pow(2).sum() / w.pow(2).sum().clamp_min(1e-300))


class CandidateProbe(Method):
    """A method for compress_model that compresses each layer with every candidate, records their
    bits and t, and hands the pipeline the most faithful one (so later layers' inputs stay near the
    original model's). `results[name]` = (weights, bits per candidate, t per candidate)."""

    def __init__(self, methods: list[Method]):
        super().__init__(methods[0].config)
        self.methods = methods
        self.name, self.Config = methods[0].name, methods[0].Config
        self.needs = frozenset().union(*(m.needs for m in methods))
        self.results: dict[str, tuple[int, list[int], list[float]]] = {}

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        for m in self.methods:
            m.check_layer(name, linear)

    def for_layer(self, name: str) -> "_LayerProbe":
        return _LayerProbe(self, name)

    def compress(self, weight, stats, bias=None):
        raise RuntimeError("CandidateProbe compresses named layers only (sequential.py calls for_layer)")


class _LayerProbe:
    def __init__(self, probe: CandidateProbe, name: str):
        self.probe, self.name = probe, name

    def compress(self, weight: torch.Tensor, stats: LayerStats | None, bias: torch.Tensor | None = None):
        bits, errors, best = [], [], None
        for method in self.probe.methods:
            compressed = method.compress(weight, stats, bias)
            bits.append(int(compressed.storage_bits()))
            errors.append(relative_error(weight, compressed))
            if best is None or errors[-1] < best[0]:
                best = (errors[-1], compressed)
        self.probe.results[self.name] = (weight.numel(), bits, errors)
        return best[1]


def measure_candidates(model: nn.Module, names: list[str], methods: list[Method], samples: list[dict],
                       device: torch.device, on_progress: Progress = _quiet) -> list[LayerCosts]:
    """Bits and t of every (layer, candidate), through the compress pipeline. Leaves `model` with its
    layers compressed (each by its most faithful candidate): reload it for anything else."""
    from llava_fa.pipeline.sequential import compress_model

    probe = CandidateProbe(methods)
    done = []
    # Methods without statistics need no forward pass at all (the pipeline would only meter errors).
    compress_model(model, probe, names, samples if probe.needs else [], device=device,
                   on_row=lambda row: (done.append(row.name), on_progress("candidates", len(done), len(names))))
    return [LayerCosts(name, *probe.results[name]) for name in names]


def price_candidates(model: nn.Module, names: list[str], methods: list[Method]) -> list[list[int]] | None:
    """Stored bits of each (layer, candidate) from a random weight of the layer's shape and stand-in
    statistics: formats whose size depends on the shape alone are priced in seconds, so a budget
    out of range is reported before the long measurement. None where a method refuses (the budget
    is then checked on the measured bits)."""
    prices, by_shape = [], {}
    for name in names:
        linear = model.get_submodule(name)
        key = (linear.out_features, linear.in_features, linear.bias is not None)
        if key not in by_shape:
            try:
                by_shape[key] = [int(m.compress(*_stand_in(*key)).storage_bits()) for m in methods]
            except Exception:  # noqa: BLE001 - only an early check; the measured bits decide
                return None
        prices.append(by_shape[key])
    return prices


def _stand_in(out_f: int, in_f: int, bias: bool) -> tuple[torch.Tensor, LayerStats, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    n = 4 * in_f  # tokens: a full-rank stand-in Hessian
    stats = LayerStats(in_f, xtx={"text": torch.eye(in_f) * n}, sq={"text": torch.full((in_f,), float(n))},
                       tokens={"text": n, "image": 0})
    return torch.randn(out_f, in_f, generator=g), stats, (torch.zeros(out_f) if bias else None)


# --- alpha -----------------------------------------------------------------------------------------

def pick_samples(samples: list[dict], k: int) -> list[dict]:
    """k samples spread evenly over the calibration set (a mixed set lists its image samples first)."""
    n = len(samples)
    return [samples[(i * n) // k] for i in range(min(k, n))]


@torch.no_grad()
def calibrated_alphas(model: nn.Module, names: list[str], samples: list[dict], config: SensitivityConfig,
                      device: torch.device, image_id: int | None = None,
                      on_progress: Progress = _quiet) -> dict[str, float]:
    """alpha_l = KL(original || layer l noised) / t, the KL per predicted token, averaged over the
    sequences' positions (image placeholders, which predict nothing, left out)."""
    dtype = next(model.parameters()).dtype
    inputs = [to_device(s, device, dtype) for s in pick_samples(samples, config.samples)]
    if not inputs:
        raise ConfigError("--sensitivity calibrated needs calibration samples; pass --nsamples > 0")
    keep = [scored_positions(s, image_id)[0] for s in inputs]
    reference = [_log_probs(model, s, k) for s, k in zip(inputs, keep)]
    alphas = {}
    for i, name in enumerate(names):
        weight = model.get_submodule(name).weight
        saved = weight.detach().clone()
        weight.data.add_(_noise(weight, config.noise, config.seed, name))
        try:
            kl = sum(float(kl_per_position(ref.double(), _log_probs(model, s, k).double()).sum())  # float64 sums
                     for ref, s, k in zip(reference, inputs, keep))
        finally:
            weight.data.copy_(saved)
        tokens = sum(int(k.sum()) for k in keep)
        alphas[name] = float(kl) / tokens / config.noise
        on_progress("sensitivity", i + 1, len(names))
    return alphas


def _noise(weight: torch.Tensor, t: float, seed: int, name: str) -> torch.Tensor:
    """Gaussian noise scaled to ||N||^2 = t ||W||^2 exactly (not just in expectation)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    n = torch.randn(weight.shape, generator=g, dtype=torch.float64)
    w = weight.detach().double().cpu()
    n *= (t * w.pow(2).sum() / n.pow(2).sum()).sqrt()
    return n.to(weight.device, weight.dtype)


def _log_probs(model: nn.Module, sample: dict, keep: torch.Tensor) -> torch.Tensor:
    """float32 log-probabilities at the kept positions (a reference of 4 x 256 tokens x 49k words: 200 MB)."""
    logits = model(**sample, use_cache=False).logits[0]
    return torch.log_softmax(logits[keep].float(), dim=-1)


# --- the whole measurement ---------------------------------------------------------------------------

def candidate_methods(recipe, candidates: list[Candidate]) -> tuple[list[Method], list[Candidate]]:
    """One method per candidate (the recipe's options with the candidate's on top), and the candidates
    with their values converted to the option types (bits: 3, not "3")."""
    methods, typed, seen = [], [], {}
    for c in candidates:
        try:
            config = build_config(recipe.method, {**recipe.options, **c.options})
        except ConfigError as e:
            raise ConfigError(f"candidate {c.label!r}: {e}") from None
        options = {k: getattr(config, k) for k in c.options}
        key = repr(sorted(config.to_dict().items()))
        if key in seen:
            raise ConfigError(f"candidates {seen[key]!r} and {c.label!r} are the same options")
        seen[key] = c.label
        methods.append(get_method(recipe.method)(config))
        typed.append(Candidate(c.label, options))
    return methods, typed


def allocate_checkpoint(model_path, recipe, candidates: list[Candidate], budget: float,
                        sensitivity: SensitivityConfig, *, device: str = "cpu", dtype: str = "auto",
                        on_info: Callable[[str], None] | None = None, on_progress: Progress = _quiet) -> dict:
    """The plan for `model_path` as a recipe dict (allocation.plan_recipe). The model is loaded whole
    (the calibrated alpha runs it end to end; the streaming path is compress's)."""
    from llava_fa.io.checkpoint import check_model_folder
    from llava_fa.pipeline import calibration_samples, check_not_compressed, check_recipe, load, resolve_model_path
    from llava_fa.pipeline.planning import make_plan, plan
    from llava_fa.pipeline.sequential import image_token_id
    from llava_fa.selection import find_parts

    info = on_info or (lambda message: None)
    sensitivity.check()
    config = check_recipe(recipe)[1]
    recipe.options = {k.replace("-", "_"): getattr(config, k.replace("-", "_")) for k in recipe.options}  # typed
    methods, candidates = candidate_methods(recipe, candidates)
    path = resolve_model_path(model_path)
    check_model_folder(path)
    check_not_compressed(path)
    info("loading the whole model into memory (allocate does not stream; compress does)")
    model, processor, _ = load(path, str(device), dtype, stream=False)
    parts = find_parts(model)
    names = plan(model, recipe, parts)[0]
    make_plan(model, names, CandidateProbe(methods), parts)  # checks every target under every candidate
    labels = [c.label for c in candidates]
    weights = [model.get_submodule(n).weight.numel() for n in names]
    prices = price_candidates(model, names, methods)
    if prices is not None:  # before the long measurement
        check_budget(prices, weights, budget, labels)
    samples, described = calibration_samples(processor, recipe.calibration, path, multimodal=bool(parts.vision))
    info(f"calibration: {described}; {len(names)} layers, {len(candidates)} candidates")
    device = torch.device(device)
    if sensitivity.kind == "calibrated":
        model.to(device)
        alphas = calibrated_alphas(model, names, samples, sensitivity, device, image_token_id(model), on_progress)
        model.to("cpu")
    else:
        alphas = dict.fromkeys(names, 1.0)
    layers = measure_candidates(model, names, methods, samples, device, on_progress)
    for lay in layers:
        lay.alpha = alphas[lay.name]
    check_budget([lay.bits for lay in layers], weights, budget, labels)  # the bits measured decide
    chosen = solve(layers, budget)
    recipe.layer_options, recipe.allocation = {}, None
    return plan_recipe(recipe, candidates, layers, chosen, budget, sensitivity.kind,
                       sensitivity.noise if sensitivity.kind == "calibrated" else None)
