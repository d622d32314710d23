"""Which linear layers to compress: `targets` and `ignore`, in llm-compressor's convention.

A pattern is an exact module name ("model.language_model.layers.0.mlp.down_proj"), a class name
("Linear" matches every nn.Linear), or a regular expression prefixed "re:" (matched with re.match,
i.e. anchored at the start of the name). A module is selected when some target matches it and no
ignore pattern matches it or one of its parents. Regexes may sweep over containers, which are
skipped; an exact name or class that designates a non-linear module is an error, and so is any
pattern that matches nothing.

Defaults come from the model's structure (`find_parts`): the language decoder's linear layers;
the vision tower and the projector on request; never the LM head or the embeddings, nor the
routers of MoE blocks.

MoE experts that transformers stores fused (3-D parameters, formats/experts.py) count as one linear
layer per expert and projection, named "<experts>.gate_up_proj.<e>" / "<experts>.down_proj.<e>":
patterns select them like any linear layer, and so does the exact name or class of the experts
module. The pipeline linearizes those modules before compressing (planning.make_plan).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats.experts import LinearExperts, expert_linear_shapes, fused_layout

VISION_NAMES = ("vision_tower", "visual", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "merger")


@dataclass(frozen=True)
class Parts:
    """Names of the structural parts of a (multimodal) causal LM."""

    decoder: str  # the language model (its `.layers` are the decoder layers)
    layers: str  # the ModuleList of decoder layers
    vision: str | None = None
    projector: str | None = None
    lm_head: str | None = None
    routers: tuple[str, ...] = ()  # linear routers of MoE blocks: left dense by default


def find_parts(model: nn.Module) -> Parts:
    names = {id(m): n for n, m in model.named_modules()}
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or id(decoder) not in names:
        raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}: expected get_decoder().layers "
                          f"to be a ModuleList (supported: HF LLaVA, Qwen2-VL/2.5-VL, Idefics3/SmolVLM, causal LMs)")
    dec_name = names[id(decoder)]
    vision = _first_named(model, VISION_NAMES)
    projector = _first_named(model, PROJECTOR_NAMES, within=vision, prefer_outside=True)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return Parts(decoder=dec_name, layers=_join(dec_name, "layers"), vision=vision, projector=projector,
                 lm_head=names.get(id(head)) if head is not None else None, routers=_linear_routers(model))


def _linear_routers(model: nn.Module) -> tuple[str, ...]:
    """The routers named by the experts layouts (siblings of an experts module) that are linear layers."""
    found = []
    for name, module in model.named_modules():
        layout = module.layout if isinstance(module, LinearExperts) else fused_layout(module)
        if layout is None:
            continue
        parent = name.rpartition(".")[0]
        for router in layout.routers:
            full = _join(parent, router)
            if isinstance(_submodule(model, full), nn.Linear):
                found.append(full)
    return tuple(found)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _first_named(model: nn.Module, leaf_names: tuple[str, ...], within: str | None = None,
                 prefer_outside: bool = False) -> str | None:
    hits = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in leaf_names]
    if prefer_outside and within:
        outside = [n for n in hits if not n.startswith(within + ".")]
        hits = outside or hits
    return min(hits, key=lambda n: (n.count("."), n)) if hits else None


def default_patterns(parts: Parts, vision: bool = False, projector: bool = False) -> tuple[list[str], list[str]]:
    """(targets, ignore) for the language decoder, plus the vision tower / projector on request."""
    targets = [f"re:{re.escape(parts.layers)}\\."]
    ignore: list[str] = []
    for wanted, part, what in ((vision, parts.vision, "vision tower"), (projector, parts.projector, "projector")):
        if wanted and part is None:
            raise ConfigError(f"this model has no {what} to compress")
        if wanted:
            targets.append(f"re:{re.escape(part)}\\.")
    # Qwen2-VL keeps its projector (merger) inside the vision module: leave it out unless asked.
    if vision and not projector and parts.projector and parts.vision and parts.projector.startswith(parts.vision + "."):
        ignore.append(parts.projector)
    if parts.routers:
        ignore.append(_routers_pattern(parts))
    return targets, ignore


def _routers_pattern(parts: Parts) -> str:
    """One regex for the routers of every decoder layer: re:(?:<layers>\\.\\d+\\.(?:mlp\\.gate))$."""
    prefix = parts.layers + "."
    inside = sorted({n[len(prefix):].partition(".")[2] for n in parts.routers if n.startswith(prefix)})
    outside = [re.escape(n) for n in parts.routers if not n.startswith(prefix)]
    per_layer = [f"{re.escape(parts.layers)}\\.\\d+\\.(?:{'|'.join(map(re.escape, inside))})"] if inside else []
    return "re:(?:" + "|".join(per_layer + outside) + ")$"


def recipe_patterns(parts: Parts, targets: list[str] | None, ignore: list[str], vision: bool = False,
                    projector: bool = False) -> tuple[list[str], list[str]]:
    """(targets, ignore) of a recipe: its own patterns merged with the defaults of `parts`.

    Explicit targets replace the decoder default only; the vision tower / projector patterns asked
    for stay. The default ignore patterns (Qwen2-VL's inner merger) are added after the recipe's."""
    default_targets, default_ignore = default_patterns(parts, vision, projector)
    chosen = list(targets) + default_targets[1:] if targets else default_targets
    return chosen, list(ignore) + [p for p in default_ignore if p not in ignore]


@dataclass(frozen=True)
class ExpertLinear:
    """One expert projection of a fused experts module, selectable before the module is linearized
    (it becomes the nn.Linear of that name then, formats/experts.py)."""

    experts: str  # the fused experts module
    out_features: int
    in_features: int


def linear_candidates(model: nn.Module) -> Iterator[tuple[str, nn.Module | ExpertLinear]]:
    """Every module with its name, in module order, each fused experts module followed by its expert linears."""
    for name, module in model.named_modules():
        yield name, module
        for sub, (out_f, in_f) in expert_linear_shapes(module).items():
            yield _join(name, sub), ExpertLinear(name, out_f, in_f)


def is_linear(module: nn.Module | ExpertLinear) -> bool:
    return isinstance(module, (nn.Linear, ExpertLinear)) and not read_directly(module)


def read_directly(module: nn.Module | ExpertLinear) -> bool:
    """A linear whose weight its parent reads as a tensor instead of calling it: nn.MultiheadAttention's
    out_proj (SigLIP's pooling head), which a compressed layer cannot stand in for."""
    return isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear)


def matches(pattern: str, name: str, module: nn.Module | ExpertLinear) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    if pattern == name:
        return True
    if pattern == "Linear":
        return is_linear(module)
    return pattern == type(module).__name__


def select(model: nn.Module, targets: list[str], ignore: list[str] = ()) -> list[str]:
    """Names of the linear layers to compress (nn.Linear, and expert linears of fused experts), in module order."""
    if not targets:
        raise ConfigError("no targets given: name at least one module, class or re: pattern")
    for p in [*targets, *ignore]:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ConfigError(f"bad regular expression in {p!r}: {e}") from None
    candidates = list(linear_candidates(model))
    hits = {p: 0 for p in targets}
    chosen: dict[str, None] = {}  # ordered set
    for name, mod in candidates:
        for p in targets:
            if matches(p, name, mod):
                found = _designated(p, name, mod)
                hits[p] += len(found)
                chosen.update(dict.fromkeys(found))
    for p, n in hits.items():
        if n == 0:
            raise ConfigError(f"target {p!r} matches no linear layer of {type(model).__name__}")
    ignored: set[str] = set()
    for p in ignore:
        found = {name for name, mod in candidates if matches(p, name, mod)}
        if not found:
            raise ConfigError(f"ignore pattern {p!r} matches no module of {type(model).__name__}")
        ignored |= found
    selected = [n for n in chosen if not any(a in ignored for a in _self_and_parents(n))]
    if not selected:
        raise ConfigError("the ignore patterns leave no layer to compress")
    kinds = dict(candidates)
    _check_not_shared(model, [n for n in selected if not isinstance(kinds[n], ExpertLinear)])
    return selected


def _designated(pattern: str, name: str, module: nn.Module | ExpertLinear) -> list[str]:
    """The linear layers a matching pattern selects: the module itself, the expert linears of an
    experts module named exactly (fused or linearized), nothing for a container swept by a regex."""
    if is_linear(module):
        return [name]
    if pattern.startswith("re:"):
        return []
    experts = [_join(name, sub) for sub in expert_linear_shapes(module)]
    if isinstance(module, LinearExperts):
        experts = [_join(name, sub) for sub, m in module.named_modules() if isinstance(m, nn.Linear)]
    if experts:
        return experts
    raise ConfigError(f"target {pattern!r} designates {name or '<model>'} ({type(module).__name__}), which is "
                      f"not a linear layer; only nn.Linear modules and fused MoE experts can be compressed")


def _self_and_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _check_not_shared(model: nn.Module, selected: list[str]) -> None:
    """A weight tied to another module (the LM head to the embeddings) cannot be swapped alone."""
    owners: dict[int, list[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        w = getattr(mod, "weight", None)
        if isinstance(w, nn.Parameter):
            owners.setdefault(id(w), []).append(name)
    for name in selected:
        others = [o for o in owners.get(id(model.get_submodule(name).weight), []) if o != name]
        if others:
            raise ConfigError(f"{name} shares its weight with {', '.join(others)} (tied embeddings); "
                              f"it cannot be compressed alone. Fix: add it to --ignore")


# --- what a selection covers ----------------------------------------------------------------------

@dataclass(frozen=True)
class SelectionCount:
    layers: int
    weights: int
    expert_layers: int  # of which expert linears of MoE experts modules
    expert_weights: int
    experts_modules: int

    def describe(self) -> str:
        text = f"{self.layers} linear layers selected ({self.weights:,} weights)"
        if self.expert_layers:
            text += (f", of which {self.expert_layers} expert linears of {self.experts_modules} MoE experts "
                     f"modules ({self.expert_weights:,} weights, {self.expert_weights / self.weights:.0%})")
        return text


def count_selected(model: nn.Module, names: list[str]) -> SelectionCount:
    """Layers and weights of a selection (before or after the experts are linearized), experts apart."""
    kinds = dict(linear_candidates(model))
    layers = {n: kinds[n] for n in names}
    experts = {n: m for n, m in layers.items() if isinstance(m, ExpertLinear) or _is_expert_of(kinds, n)}
    weights = {n: m.in_features * m.out_features for n, m in layers.items()}
    return SelectionCount(len(layers), sum(weights.values()), len(experts), sum(weights[n] for n in experts),
                          len({n.rsplit(".", 2)[0] for n in experts}))


def _is_expert_of(kinds: dict, name: str) -> bool:
    return isinstance(kinds.get(name.rsplit(".", 2)[0]), LinearExperts)


def dense_fused_weights(model: nn.Module, prefix: str) -> dict[str, int]:
    """Weights in 3-D parameters under `prefix` that no experts layout linearizes (class name ->
    weights): fused experts of a family not in formats/experts.FUSED_EXPERTS, which stay dense."""
    left: dict[str, int] = {}
    for name, module in model.named_modules():
        if not name.startswith(prefix + ".") or fused_layout(module) is not None or _is_conv(module):
            continue
        n = sum(p.numel() for p in module.parameters(recurse=False) if p.dim() == 3)
        if n:
            left[type(module).__name__] = left.get(type(module).__name__, 0) + n
    return left


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))  # conv1d weights are 3-D too (Mamba, Jamba)
