"""What calibration must know about a model family, as a table (model_type -> needs).

Most multimodal models put their image features in the decoder's sequence, at the positions of the
image placeholder tokens: the statistics of a decoder linear split its rows by that mask. Families
that feed images another way are listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Architecture:
    # The image placeholder positions of the decoder's sequence hold image features. When False,
    # the placeholders are plain token embeddings and every row of the sequence is text.
    image_features_in_sequence: bool = True
    # Linear layers (name suffixes) whose input rows are all image features, whatever the mask.
    image_inputs: tuple[str, ...] = ()
    # The model adds terms that do not depend on the hidden states between decoder layers (Qwen3-VL's
    # deepstack: image features of inner vision layers added at the image positions after the
    # first decoder layers). The catch pass records each term; the layer-by-layer pass adds it.
    additive_between_layers: bool = False


DEFAULT = Architecture()

ARCHITECTURES: dict[str, Architecture] = {
    # Llama 3.2 Vision: one <|image|> placeholder per image in the text; the image states reach the
    # cross-attention layers as keys and values (their rows are vision tokens), the queries are text.
    "mllama": Architecture(image_features_in_sequence=False,
                           image_inputs=("cross_attn.k_proj", "cross_attn.v_proj")),
    "qwen3_vl": Architecture(additive_between_layers=True),
    "qwen3_vl_moe": Architecture(additive_between_layers=True),
}


def architecture_of(model: nn.Module) -> Architecture:
    return ARCHITECTURES.get(getattr(model.config, "model_type", ""), DEFAULT)
