"""Compression spread over the processes of torch.distributed:
`torchrun --nproc-per-node N -m llava_fa compress ...` (NCCL on GPUs, one per rank; gloo on CPU).

The decoder layers' passes over the calibration inputs are split by samples (passes.py): each rank
forwards its share, and the inputs each module received are broadcast so that the module's owner
accumulates its statistics over all samples, in the order a single process uses (a run with MoE
expert linears among its targets keeps every sample on every rank). Per block, each rank compresses only the modules it owns; each
compressed module is then broadcast from its owner, so every rank holds the whole compressed block
before the pass that follows. The checkpoint is bit-identical to a run in one process. (All-reducing
partial sums instead would change the floating-point summation order, hence the stored codes.)

Owners are assigned per block by weight count, largest first to the least loaded rank; the expert
linears of one MoE experts module go to one rank together (a starved expert takes the statistics
pooled over its module's experts). Rank 0 alone writes the work dir, prints and saves.
"""

from __future__ import annotations

import atexit
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llava_fa import errors
from llava_fa.errors import LlavaFAError
from llava_fa.formats import CompressedLinear
from llava_fa.formats.experts import LinearExperts
from llava_fa.io.modules import build_module, module_entry
from llava_fa.pipeline.report import LayerReport


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """The rank that writes files and prints."""
        return self.rank == 0


SINGLE = World()


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init_world(device: str) -> tuple[World, str]:
    """The process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT), joined once; and this rank's device (cuda:LOCAL_RANK on GPUs)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE, device
    import torch.distributed as dist

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        # device_id: NCCL binds this rank's GPU now instead of guessing it at the first collective
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(device) if cuda else None)
        atexit.register(_leave, dist)  # NCCL warns of leaked resources when a process exits still in its group
    return World(dist.get_rank(), dist.get_world_size()), device


def _leave(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.active:
        import torch.distributed as dist

        dist.barrier()


def gather_stage_seconds(world: World, seconds: dict[str, float]) -> list[dict[str, float]] | None:
    """Every rank's stage seconds (rank order), for the report: the ranks' compress times differ.
    None in a single process."""
    if not world.active:
        return None
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, seconds)
    return gathered


def raise_first(world: World, found: tuple[int, LlavaFAError] | None) -> None:
    """Raise, on every rank, the error of the lowest index any rank `found` (index, error) in its share
    of an ordered check, so that all ranks stop alike with the message a single process gives (it checks
    in the same order and stops at the first). Nothing when no rank found one."""
    if not world.active:
        if found is not None:
            raise found[1]
        return
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, None if found is None else (found[0], type(found[1]).__name__, str(found[1])))
    reported = sorted(g for g in gathered if g is not None)
    if not reported:
        return
    if found is not None and found[0] == reported[0][0]:
        raise found[1]
    _, kind, message = reported[0]
    raise getattr(errors, kind, LlavaFAError)(message)


def assign_owners(model: nn.Module, names: tuple[str, ...], world: World) -> dict[str, int]:
    """name -> the rank that compresses it (rank 0 for everything in a single process)."""
    if not world.active:
        return {name: 0 for name in names}
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(experts_group(model, name), []).append(name)
    size = {key: sum(_weights(model, n) for n in members) for key, members in groups.items()}
    loads, owners = [0] * world.size, {}
    for key in sorted(groups, key=lambda k: -size[k]):  # stable: ties keep module order
        rank = loads.index(min(loads))
        loads[rank] += size[key]
        owners.update({n: rank for n in groups[key]})
    return owners


def experts_group(model: nn.Module, name: str) -> str:
    """The MoE experts module an expert linear ("<experts>.<proj>.<e>") belongs to, else the name."""
    parent = name.rsplit(".", 2)[0]
    try:
        return parent if isinstance(model.get_submodule(parent), LinearExperts) else name
    except AttributeError:
        return name


def _weights(model: nn.Module, name: str) -> int:
    module = model.get_submodule(name)
    return module.in_features * module.out_features


def share_block(world: World, names: tuple[str, ...], owners: dict[str, int],
                done: dict[str, tuple[CompressedLinear, LayerReport]], device: torch.device
                ) -> dict[str, tuple[CompressedLinear, LayerReport]]:
    """Every module of the block on every rank: each one broadcast from its owner, in module order.

    What a module is (its entry, tensor names, shapes, dtypes, report row) travels as a small
    pickled header; its tensors as one byte buffer on `device` (GPU to GPU under NCCL, no host
    round trip): the receiver gets the owner's bytes, so the stored tensors stay bit-identical."""
    if not world.active:
        return done
    import torch.distributed as dist

    shared = {}
    for name in names:
        owner, mine = owners[name], owners[name] == world.rank
        header: list[Any] = [None]
        if mine:
            module, row = done[name]
            state = {k: t.detach() for k, t in module.state_dict().items()}
            header = [(module_entry(module), {k: (tuple(t.shape), t.dtype) for k, t in state.items()}, row)]
        dist.broadcast_object_list(header, src=owner, device=device if device.type == "cuda" else None)
        entry, specs, row = header[0]
        buffer = (_as_bytes(state.values(), device) if mine
                  else torch.empty(sum(_nbytes(*spec) for spec in specs.values()), dtype=torch.uint8, device=device))
        dist.broadcast(buffer, src=owner)
        if mine:
            shared[name] = done[name]
            continue
        module = build_module(name, entry)
        module.load_state_dict(_from_bytes(buffer, specs))
        shared[name] = (module.to(device), row)
    return shared


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _as_bytes(tensors, device: torch.device) -> torch.Tensor:
    """The tensors' bytes, one after the other, in one uint8 buffer on `device`."""
    parts = [t.to(device).contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8, device=device)


def _from_bytes(buffer: torch.Tensor, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    state, offset = {}, 0
    for key, (shape, dtype) in specs.items():
        n = _nbytes(shape, dtype)
        state[key] = buffer[offset:offset + n].clone().view(dtype).reshape(shape)  # clone: aligned storage
        offset += n
    return state
