"""MoE experts as one linear module per expert and projection (`LinearExperts`).

transformers 5 stores the experts of an MoE block fused, as 3-D parameters of one module
(`gate_up_proj` (E, 2I, H), `down_proj` (E, H, I)). Compression works on 2-D linear layers, so
a fused experts module is replaced by `LinearExperts` (llm-compressor calls this linearization):
`gate_up_proj` and `down_proj` become ModuleLists of E linear layers, `<experts>.gate_up_proj.<e>`
and `<experts>.down_proj.<e>`, each an nn.Linear until it is swapped for a compressed one. Its
forward is the fused module's eager loop, so every expert linear receives exactly the rows routed
to it (the calibration hooks see the routing without knowing about it), and a checkpoint stores
each expert linear under that name like any other compressed layer. Loading replaces the fused
module of the model's skeleton by an empty `LinearExperts` first (`unfuse_experts`), keyed by the
table below, so `from_pretrained` needs nothing else than the `quantization_config` entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ExpertsLayout:
    """How a fused experts class stores and runs its experts."""

    gate_up: str = "gate_up_proj"  # (E, 2I, H): the gate rows then the up rows, concatenated
    down: str = "down_proj"  # (E, H, I)
    # Siblings of the experts module in the MoE block that route tokens: they stay dense by default
    # (selection.default_patterns), as llm-compressor and GPTQModel leave the router unquantized.
    routers: tuple[str, ...] = ("gate", "router", "shared_expert_gate")

    @property
    def projections(self) -> tuple[str, str]:
        return self.gate_up, self.down


GATE_UP_DOWN = ExpertsLayout()

# Fused experts classes (by class name: this layer does not import transformers) whose eager
# forward is the loop of `LinearExperts.forward`: y = sum over the top-k experts e of a token of
# w_e * down_e(act(gate_e x) * up_e x). Checked against transformers' own source by tests/test_moe.py;
# a family with another loop (transposed or interleaved weights, biases, a custom gate) needs its
# own layout and forward before it can be listed.
FUSED_EXPERTS: dict[str, ExpertsLayout] = {name: GATE_UP_DOWN for name in (
    "MixtralExperts", "Qwen2MoeExperts", "Qwen3MoeExperts", "Qwen3NextExperts", "Qwen3VLMoeTextExperts",
    "Qwen3_5MoeExperts", "OlmoeExperts", "PhimoeExperts", "DeepseekV2Experts", "DeepseekV3Experts",
    "Glm4MoeExperts", "Ernie4_5_MoeExperts", "GraniteMoeExperts", "JambaExperts", "MiniMaxExperts")}


def fused_layout(module: nn.Module) -> ExpertsLayout | None:
    """The layout of a fused experts module this package can linearize, else None."""
    layout = FUSED_EXPERTS.get(type(module).__name__)
    if layout is None:
        return None
    params = [getattr(module, p, None) for p in layout.projections]
    if not all(isinstance(p, torch.Tensor) and p.dim() == 3 for p in params):
        return None
    return layout


def expert_linear_shapes(module: nn.Module) -> dict[str, tuple[int, int]]:
    """{"<projection>.<e>": (out_features, in_features)} of the expert linears of a fused module."""
    layout = fused_layout(module)
    if layout is None:
        return {}
    shapes = {}
    for proj in layout.projections:
        weight = getattr(module, proj)
        for e in range(weight.shape[0]):
            shapes[f"{proj}.{e}"] = (weight.shape[1], weight.shape[2])
    return shapes


def split_expert_name(name: str) -> tuple[str, str, int] | None:
    """"a.experts.gate_up_proj.3" -> ("a.experts", "gate_up_proj", 3); None for other names."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def routed_tokens(top_k_index: torch.Tensor, num_experts: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, top-k slot, token index) of each expert that receives tokens, in the order of the
    fused modules' eager loop (so the sums of each token add up in the same order)."""
    with torch.no_grad():
        # one more class: an index equal to num_experts marks a token routed nowhere (expert parallelism)
        mask = F.one_hot(top_k_index, num_classes=num_experts + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert in hit[:, 0].tolist():
        if expert < num_experts:
            top_k_pos, token_idx = torch.where(mask[expert])
            yield expert, top_k_pos, token_idx


class LinearExperts(nn.Module):
    """The experts of one MoE block, one linear module per expert and projection.

    Holds what the fused module holds (`act_fn`), and `gate_up_proj[e]` (2I x H) and
    `down_proj[e]` (H x I): nn.Linear, or any compressed Linear that replaced one."""

    def __init__(self, gate_up: list[nn.Module], down: list[nn.Module], act_fn: nn.Module,
                 layout: ExpertsLayout = GATE_UP_DOWN):
        super().__init__()
        if len(gate_up) != len(down):
            raise ValueError(f"{len(gate_up)} gate_up projections for {len(down)} down projections")
        self.num_experts = len(gate_up)
        self.layout = layout
        setattr(self, layout.gate_up, nn.ModuleList(gate_up))
        setattr(self, layout.down, nn.ModuleList(down))
        self.act_fn = act_fn

    @classmethod
    def from_fused(cls, fused: nn.Module, layout: ExpertsLayout) -> "LinearExperts":
        """The same experts as `fused`, each slice copied into its own nn.Linear (own storage:
        safetensors refuses tensors that share memory, and a dense expert left uncompressed must
        not keep the whole fused tensor alive)."""
        projections = [[_linear(w) for w in getattr(fused, proj).detach()] for proj in layout.projections]
        return cls(*projections, act_fn=fused.act_fn, layout=layout)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        gate_up, down = (getattr(self, p) for p in self.layout.projections)
        final = torch.zeros_like(hidden_states)
        for expert, top_k_pos, token_idx in routed_tokens(top_k_index, self.num_experts):
            gate, up = gate_up[expert](hidden_states[token_idx]).chunk(2, dim=-1)
            out = down[expert](self.act_fn(gate) * up) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}"


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.clone(), requires_grad=False)
    return linear


def unfuse_experts(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Replace each fused experts module that one of `names` (expert linears, "<experts>.<proj>.<e>")
    points into by its `LinearExperts`, in place; return the names of the modules replaced.

    Names that point elsewhere are left alone, and so is a module already linearized."""
    replaced = []
    for name in names:
        split = split_expert_name(name)
        if split is None or split[0] in replaced:
            continue
        try:
            module = model.get_submodule(split[0])
        except AttributeError:
            continue
        layout = fused_layout(module)
        if layout is None or split[1] not in layout.projections:
            continue
        parent, _, child = split[0].rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, LinearExperts.from_fused(module, layout))
        replaced.append(split[0])
    return replaced
