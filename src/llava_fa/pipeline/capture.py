"""The catch pass: the arguments each decoder layer receives in a plain forward of the model.

The layers of one model need not receive the same arguments: Gemma 3 gives its sliding-window
layers another attention mask and other rotary embeddings than its full-attention layers; Mllama
gives the image states to its cross-attention layers only, and skips those layers for a text-only
input. So each layer is calibrated with the (args, kwargs) it was called with, recorded per sample.

During this pass no layer computes: each layer's forward is replaced by a stub that records its
arguments and hands its hidden states on unchanged. The pass costs the embeddings (and the vision
tower) only and no decoder layer visits the device. The first layer's hidden states are kept; the
hidden states of later layers are the outputs of the (compressed) layers before them, which
sequential.py computes. A model that changes the hidden states between two layers cannot be
compressed this way, and the stubs notice it: the tensor a layer receives is not the one the
previous layer handed on. The exception is a change the architecture table declares additive
(Qwen3-VL's deepstack adds image features after the first layers): there the stubs hand on zeros,
so what reaches the next layer is exactly the added term, recorded for sequential.py to add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llava_fa.errors import ConfigError

LayerCall = tuple[tuple, dict[str, Any]]  # a layer's (args, kwargs) without its hidden states


class StopForward(Exception):
    """Raised once every needed layer's arguments are recorded: the rest of the forward is not run."""


@dataclass
class DecoderInputs:
    """What the decoder layers receive, per sample."""

    hidden: list[torch.Tensor] = field(default_factory=list)  # the first decoder layer's hidden states
    calls: list[list[LayerCall | None]] = field(default_factory=list)  # [layer][sample]; None: layer skipped
    # [layer][sample]: what the model adds to the layer's output before the next layer (None: nothing)
    added: list[list[torch.Tensor | None]] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int) -> "DecoderInputs":
        return cls([], [[] for _ in range(num_layers)], [[] for _ in range(num_layers)])


def split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    """(hidden states, the other args, the other kwargs) of a decoder layer call."""
    if args:
        return args[0], args[1:], kwargs
    rest = dict(kwargs)
    return rest.pop("hidden_states"), (), rest


class LayerRecorder:
    """Stubs in place of the decoder layers' forwards, recording each sample's layer calls.

    `stop_after`: the last layer whose arguments are needed; the forward stops there. `stop_at`:
    modules that run after the layers (the LM head), where the forward stops when a sample skips
    that layer."""

    def __init__(self, layers: nn.ModuleList, stop_after: int, stop_at: tuple[nn.Module, ...] = (),
                 additive: bool = False):
        self.layers, self.stop_after, self.stop_at, self.additive = layers, stop_after, stop_at, additive
        self.inputs = DecoderInputs.empty(len(layers))
        self._sample: list[LayerCall | None] = []
        self._added: list[torch.Tensor | None] = []
        self._first: torch.Tensor | None = None
        self._handed_on: tuple[int, torch.Tensor, int] | None = None  # (layer, tensor, its version)
        self._saved: list[Any] = []
        self._handles: list = []

    def __enter__(self) -> "LayerRecorder":
        for index, layer in enumerate(self.layers):
            self._saved.append(layer.__dict__.get("forward"))  # an accelerate hook may wrap it already
            layer.forward = self._stub(index)
        self._handles = [m.register_forward_pre_hook(_stop) for m in self.stop_at]
        return self

    def __exit__(self, *exc) -> None:
        # In reverse: a module listed twice (shared weights) gets back its own forward, not a stub.
        for layer, saved in reversed(list(zip(self.layers, self._saved))):
            if saved is None:
                del layer.forward
            else:
                layer.forward = saved
        for handle in self._handles:
            handle.remove()
        self._saved, self._handles = [], []

    def run(self, model: nn.Module, inputs: dict) -> None:
        """One sample's forward, up to the last needed layer; its layer calls are added to `inputs`."""
        self._sample, self._first, self._handed_on = [None] * len(self.layers), None, None
        self._added = [None] * len(self.layers)
        try:
            model(**inputs)
        except StopForward:
            pass
        if self._first is None:
            raise RuntimeError(f"{type(model).__name__} never called a decoder layer")
        self.inputs.hidden.append(self._first)
        for index, call in enumerate(self._sample):
            self.inputs.calls[index].append(call)
            self.inputs.added[index].append(self._added[index])

    def _stub(self, index: int):
        def forward(*args, **kwargs):
            hidden, rest, rest_kwargs = split_hidden(args, kwargs)
            if self.additive and self._first is not None:
                self._record_added(hidden)
            else:
                self._check_handed_on(index, hidden)
            if self._sample[index] is not None:
                raise ConfigError(f"decoder layer {index} runs twice in one forward; layer-by-layer compression "
                                  "needs each layer to run once")
            self._sample[index] = (rest, rest_kwargs)
            if self._first is None:
                self._first = hidden
            handed = torch.zeros_like(hidden) if self.additive else hidden
            self._handed_on = (index, handed, handed._version)
            if index >= self.stop_after:
                raise StopForward
            return handed
        return forward

    def _record_added(self, hidden: torch.Tensor) -> None:
        """Zeros were handed on: what arrives is the term the model added after the previous layer."""
        previous, zeros, version = self._handed_on
        if hidden is not zeros or hidden._version != version:
            self._added[previous] = hidden.clone()

    def _check_handed_on(self, index: int, hidden: torch.Tensor) -> None:
        """The hidden states must reach this layer as the previous layer handed them on: the same
        storage (a model may index a tuple output), not modified in place."""
        if self._handed_on is None:
            return
        previous, tensor, version = self._handed_on
        same = hidden is tensor or hidden.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        if not same or hidden._version != version:
            raise ConfigError(f"the model changes the hidden states between decoder layers {previous} and {index} "
                              f"(e.g. Qwen3-VL's deepstack image features): layer-by-layer compression would miss "
                              f"that change, so this architecture is not supported")


def _stop(module: nn.Module, args: tuple) -> None:
    raise StopForward
