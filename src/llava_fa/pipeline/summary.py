"""The selection summary printed before any work: what is compressed, part by part, and what is not, and why.

One row per structural part (decoder, vision tower, projector, LM head, MoE routers, anything
else): its linear layers and weights, how many of them the selection takes, the share of the
part's weights, and for what is left a reason a user can act on. Then the method's bits and the
layers whose width its group size does not divide (they keep a shorter last group).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from llava_fa.methods.base import Method
from llava_fa.selection import Parts, is_linear, linear_candidates, matches, read_directly

# Options that set the bits a method spends; shown even at their default.
BIT_OPTIONS = ("bits", "q_bits", "group_size", "sym", "bpw", "mag_bits", "phase_bits", "rank", "lr_bits",
               "transform", "structure", "variant")


@dataclass
class PartCount:
    part: str
    layers: int = 0
    weights: int = 0
    selected_layers: int = 0
    selected_weights: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why -> layers left out for it

    def row(self) -> str:
        share = self.selected_weights / self.weights if self.weights else 0.0
        left = "; ".join(f"{n} {why}" for why, n in self.reasons.items())
        return (f"  {self.part:13s} {self.selected_layers:4d} of {self.layers:<4d} linears, "
                f"{self.selected_weights:,} of {self.weights:,} weights ({share:.1%})"
                + (f"  left: {left}" if left else ""))


def part_of(name: str, parts: Parts) -> str:
    """The structural part a module belongs to (the projector before the vision tower that may hold it)."""
    def inside(prefix: str | None) -> bool:
        return bool(prefix) and (name == prefix or name.startswith(prefix + "."))
    if name in parts.routers:
        return "MoE routers"
    for label, prefix in (("projector", parts.projector), ("vision tower", parts.vision),
                          ("decoder", parts.layers), ("LM head", parts.lm_head)):
        if inside(prefix):
            return label
    return "other"


def why_left(part: str, name: str, module, ignore: list[str]) -> str:
    """Why a linear of `part` is not selected, with what would select it."""
    if read_directly(module):
        return "read directly by nn.MultiheadAttention (cannot be compressed)"
    for pattern in ignore:
        if matches(pattern, name, module):
            return "kept full precision by default" if part == "MoE routers" else f"ignored by {pattern}"
    return {"vision tower": "not targeted (--vision)", "projector": "not targeted (--projector)",
            "LM head": "not targeted (--target lm_head)"}.get(part, "not matched by the targets")


def count_parts(model: nn.Module, names: list[str], parts: Parts, ignore: list[str]) -> list[PartCount]:
    chosen = set(names)
    counts: dict[str, PartCount] = {}
    for name, module in dict(linear_candidates(model)).items():
        if not (is_linear(module) or read_directly(module)):
            continue
        part = part_of(name, parts)
        c = counts.setdefault(part, PartCount(part))
        n = module.in_features * module.out_features
        c.layers, c.weights = c.layers + 1, c.weights + n
        if name in chosen:
            c.selected_layers, c.selected_weights = c.selected_layers + 1, c.selected_weights + n
        else:
            why = why_left(part, name, module, ignore)
            c.reasons[why] = c.reasons.get(why, 0) + 1
    order = ("decoder", "MoE routers", "vision tower", "projector", "LM head", "other")
    return [counts[p] for p in order if p in counts]


def method_line(method: Method) -> str:
    config = method.config.to_dict()
    defaults = type(method.config)().to_dict()
    shown = {k: v for k, v in config.items() if k in BIT_OPTIONS or v != defaults.get(k)}
    return f"method {method.name}: " + ", ".join(f"{k}={v}" for k, v in shown.items())


def shorter_last_groups(model: nn.Module, names: list[str], method: Method) -> str | None:
    """A note on the selected layers whose width the group size of the method's affine codes does not divide."""
    config = method.config
    g = getattr(config, "group_size", None)
    if not (hasattr(config, "bits") or hasattr(config, "q_bits")) or not g or g <= 0:
        return None
    kinds = dict(linear_candidates(model))
    widths: dict[int, int] = {}
    for name in names:
        width = kinds[name].in_features
        if width % g and width > g:
            widths[width] = widths.get(width, 0) + 1
    if not widths:
        return None
    listed = ", ".join(f"{n} of width {w}" for w, n in sorted(widths.items()))
    return (f"group size {g} does not divide every width: {sum(widths.values())} layer(s) ({listed}) keep a "
            f"shorter last group (stored as compressed-tensors does; the Triton kernel runs them, gemlite does not)")


def summarize(model: nn.Module, names: list[str], parts: Parts, ignore: list[str], method: Method) -> list[str]:
    """The lines printed before work starts."""
    lines = [method_line(method), "selection by part:"]
    lines += [c.row() for c in count_parts(model, names, parts, ignore)]
    note = shorter_last_groups(model, names, method)
    return lines + ([note] if note else [])
