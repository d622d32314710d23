"""Which linear layers to compress: `targets` and `ignore`, in llm-compressor's convention.

A pattern is an exact module name ("model.language_model.layers.0.mlp.down_proj"), a class name
("Linear" matches every nn.Linear), or a regular expression prefixed "re:" (matched with re.match,
i.e. anchored at the start of the name). A module is selected when some target matches it and no
ignore pattern matches it or one of its parents. Regexes may sweep over containers, which are
skipped; an exact name or class that designates a non-linear module is an error, and so is any
pattern that matches nothing.

Defaults come from the model's structure (`find_parts`): the language decoder's linear layers;
the vision tower and the projector on request; never the LM head or the embeddings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from llava_fa.errors import ConfigError

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
                 lm_head=names.get(id(head)) if head is not None else None)


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
    return targets, ignore


def recipe_patterns(parts: Parts, targets: list[str] | None, ignore: list[str], vision: bool = False,
                    projector: bool = False) -> tuple[list[str], list[str]]:
    """(targets, ignore) of a recipe: its own patterns merged with the defaults of `parts`.

    Explicit targets replace the decoder default only; the vision tower / projector patterns asked
    for stay. The default ignore patterns (Qwen2-VL's inner merger) are added after the recipe's."""
    default_targets, default_ignore = default_patterns(parts, vision, projector)
    chosen = list(targets) + default_targets[1:] if targets else default_targets
    return chosen, list(ignore) + [p for p in default_ignore if p not in ignore]


def matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    if pattern == name:
        return True
    if pattern == "Linear":
        return isinstance(module, nn.Linear)
    return pattern == type(module).__name__


def select(model: nn.Module, targets: list[str], ignore: list[str] = ()) -> list[str]:
    """Names of the nn.Linear modules to compress, in module order."""
    if not targets:
        raise ConfigError("no targets given: name at least one module, class or re: pattern")
    for p in [*targets, *ignore]:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ConfigError(f"bad regular expression in {p!r}: {e}") from None
    modules = list(model.named_modules())
    hits = {p: 0 for p in targets}
    chosen: list[str] = []
    for name, mod in modules:
        for p in targets:
            if not matches(p, name, mod):
                continue
            if not isinstance(mod, nn.Linear):
                if not p.startswith("re:"):
                    raise ConfigError(f"target {p!r} designates {name or '<model>'} ({type(mod).__name__}), which is "
                                      f"not a linear layer; only nn.Linear modules can be compressed")
                continue
            hits[p] += 1
            if not chosen or chosen[-1] != name:
                chosen.append(name)
    for p, n in hits.items():
        if n == 0:
            raise ConfigError(f"target {p!r} matches no linear layer of {type(model).__name__}")
    ignored: set[str] = set()
    for p in ignore:
        found = {name for name, mod in modules if matches(p, name, mod)}
        if not found:
            raise ConfigError(f"ignore pattern {p!r} matches no module of {type(model).__name__}")
        ignored |= found
    selected = [n for n in chosen if not any(a in ignored for a in _self_and_parents(n))]
    if not selected:
        raise ConfigError("the ignore patterns leave no layer to compress")
    _check_not_shared(model, selected)
    return selected


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
