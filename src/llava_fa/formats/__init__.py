"""Stored formats: one compressed Linear class per format, and the registry a checkpoint loader uses.

Every format registers on import of this package (eagerly), so loading a checkpoint needs no
compression method: a format owns its encoding (`from_codes` / `from_parts`), its buffers,
`dequantize()` and its forward backends (formats/base.py). MoE experts stored fused by transformers
(3-D parameters) are held as one linear per expert by `LinearExperts` (formats/experts.py), whose
table `FUSED_EXPERTS` names the fused classes a checkpoint loader linearizes before filling them.
"""

from llava_fa.formats.registry import FORMATS, get_format, register_format  # noqa: I001
from llava_fa.formats.base import CompressedLinear, set_forward_mode
from llava_fa.formats.affine import AffineLinear
from llava_fa.formats.binary import BinaryLinear
from llava_fa.formats.experts import FUSED_EXPERTS, LinearExperts, unfuse_experts
from llava_fa.formats.fourier import FourierLinear
from llava_fa.formats.hadamard import HadamardLinear
from llava_fa.formats.higgs import HiggsLinear
from llava_fa.formats.lowrank import LowRankLinear

__all__ = ["FORMATS", "get_format", "register_format", "CompressedLinear", "set_forward_mode", "AffineLinear",
           "BinaryLinear", "FourierLinear", "HadamardLinear", "HiggsLinear", "LowRankLinear", "FUSED_EXPERTS",
           "LinearExperts", "unfuse_experts"]
