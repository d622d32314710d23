"""What the pipeline will compress, checked once before any work, and in which blocks.

A block is one unit of progress and one shard of the work dir: `pre` (targets that run before the
decoder layers: vision tower, projector), `layer_NNN` (the targets of one decoder layer) and
`post` (the LM head).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from llava_fa.calibration.architectures import architecture_of
from llava_fa.errors import ConfigError, DataError
from llava_fa.formats import unfuse_experts
from llava_fa.methods.base import Method
from llava_fa.selection import Parts, dense_fused_weights, find_parts, recipe_patterns, select

log = logging.getLogger("llava_fa")


@dataclass(frozen=True)
class Plan:
    """The selected linear layers of one model, grouped into blocks in the order they are compressed."""

    parts: Parts
    names: tuple[str, ...]  # every target, in module order
    pre: tuple[str, ...]  # outside the decoder layers, run before them
    layers: dict[int, tuple[str, ...]]  # decoder layer index -> its targets
    post: tuple[str, ...]  # the LM head
    num_layers: int  # decoder layers in the model, targeted or not
    image_inputs: tuple[str, ...] = ()  # decoder linears (name suffixes) whose inputs are image features only

    @property
    def blocks(self) -> list[str]:
        return ((["pre"] if self.pre else []) + [layer_block(i) for i in sorted(self.layers)]
                + (["post"] if self.post else []))

    def image_only(self, name: str) -> bool:
        """Does the linear `name` see image features only (its statistics are all `image` tokens)? The
        vision tower and the projector do, and the architecture's image inputs (cross-attention k/v)."""
        inside = any(name == p or name.startswith(p + ".") for p in (self.parts.vision, self.parts.projector) if p)
        return inside or name.endswith(self.image_inputs)

    def last_layer(self, calibrated: bool) -> int:
        """Index of the last decoder layer to run (-1: none). Calibrating the LM head needs the
        outputs of every layer; otherwise the run stops after the last targeted one."""
        if self.post and calibrated:
            return self.num_layers - 1
        return max(self.layers) if self.layers else -1


def layer_block(index: int) -> str:
    return f"layer_{index:03d}"


def make_plan(model: nn.Module, names: list[str], method: Method, parts: Parts | None = None) -> Plan:
    """Check the targets (once) and group them into blocks.

    Fused MoE experts that targets point into are linearized first, in place (formats/experts.py):
    from here on each expert projection is the nn.Linear its name designates."""
    parts = parts or find_parts(model)
    unfuse_experts(model, names)
    warn_dense_experts(model, parts)
    check_targets(model, names, method)
    layers: nn.ModuleList = model.get_submodule(parts.layers)
    per_layer: dict[int, list[str]] = {}
    pre, post = [], []
    for name in names:
        if name.startswith(parts.layers + "."):
            per_layer.setdefault(int(name[len(parts.layers) + 1:].split(".")[0]), []).append(name)
        elif name == parts.lm_head:
            post.append(name)
        else:
            pre.append(name)
    return Plan(parts=parts, names=tuple(names), pre=tuple(pre),
                layers={i: tuple(v) for i, v in sorted(per_layer.items())}, post=tuple(post), num_layers=len(layers),
                image_inputs=architecture_of(model).image_inputs)


def warn_dense_experts(model: nn.Module, parts: Parts) -> None:
    """Fused MoE experts of a family without a layout cannot be selected: say so, they are not small."""
    left = dense_fused_weights(model, parts.layers)
    if left:
        log.warning("fused MoE experts of %s (%s weights) stay dense: formats/experts.py has no layout for them",
                    ", ".join(left), f"{sum(left.values()):,}")


def check_targets(model: nn.Module, names: list[str], method: Method) -> None:
    """Everything that can be wrong with the targets, found before any work starts."""
    for name in names:
        mod = model.get_submodule(name)
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"{name} is a {type(mod).__name__}, not a linear layer")
        # A streamed skeleton's weights are on meta until their layer's turn (streaming.py checks them then).
        if mod.weight.device.type != "meta" and not all_finite(mod.weight):
            bad = int((~torch.isfinite(mod.weight)).sum())
            raise DataError(f"layer {name} has {bad} NaN/Inf weight(s); the model is broken. "
                            f"Fix: check the checkpoint you are compressing")
        method.check_layer(name, mod)


def all_finite(weight: torch.Tensor) -> bool:
    """No NaN or Inf in `weight`. A NaN or Inf makes the float32 sum non-finite, so a finite sum
    settles it in one reduction (isfinite(...).all() on bfloat16 took 30x longer on CPU); a sum that
    overflows from finite values alone falls back to the exact test."""
    return bool(torch.isfinite(weight.sum(dtype=torch.float32))) or bool(torch.isfinite(weight).all())


def plan(model: nn.Module, recipe, parts: Parts | None = None) -> tuple[list[str], list[str], list[str]]:
    """(selected names, targets, ignore) for a recipe on a model."""
    targets, ignore = recipe_patterns(parts or find_parts(model), recipe.targets, recipe.ignore, recipe.vision,
                                      recipe.projector)
    return select(model, targets, ignore), targets, ignore
