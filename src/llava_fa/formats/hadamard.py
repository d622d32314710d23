"""`hadamard`: affine codes of a randomly rotated weight, W = W_r R with R = H_blk diag(d).

R acts on the input dimension: d (n,) are random signs and H_blk is block-diagonal with orthonormal
Sylvester-Hadamard blocks of size `block`, the largest power of two that divides n (n = 576 = 9 * 64:
blocks of 64; 1536 = 3 * 512: blocks of 512; powers of two: one block). This is the cheap, exact
choice (a fast Walsh-Hadamard transform per block, O(n log block)); it mixes only within blocks,
which spreads outliers less than a full-width rotation (a Kronecker with a 9x9 or 3x3 orthogonal
matrix would mix across blocks, at the cost of a dense small matrix), but the random signs make
each block incoherent on its own. W x = W_r (R x), so a kernel could also rotate activations.

Stored tensors: `qweight`, `scales`, `qzeros` exactly as the `affine` format (codes of W_r = W R^T),
and `signs` uint8 (ceil(n/8),): the sign vector d packed one bit per channel (1 = negative), stored
rather than a seed so the layer does not depend on a random generator's implementation.
"""

from __future__ import annotations

import torch

from llava_fa.formats.affine import AffineLinear
from llava_fa.formats.base import CompressedLinear
from llava_fa.formats.registry import register_format
from llava_fa.quantizers import pack, packed_width, unpack
from llava_fa.transforms.hadamard import hadamard_block, unrotate_weight


@register_format
class HadamardLinear(AffineLinear):
    format = "hadamard"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, bits: int, group_size: int,
                 sym: bool = False, block: int | None = None):
        super().__init__(in_features, out_features, bias, bits=bits, group_size=group_size, sym=sym)
        self.block = int(block) if block else hadamard_block(in_features)
        if self.block & (self.block - 1) or in_features % self.block:
            raise ValueError(f"hadamard: block {self.block} must be a power of two dividing {in_features}")
        self.register_buffer("signs", torch.zeros(packed_width(in_features, 1), dtype=torch.uint8))

    def params(self) -> dict:
        return {**super().params(), "block": self.block}

    def set_signs(self, d: torch.Tensor) -> None:
        self.signs = pack((d < 0).to(torch.int64), 1)

    def sign_vector(self) -> torch.Tensor:
        return 1.0 - 2.0 * unpack(self.signs, 1, self.in_features).float()

    def rotated_weight(self) -> torch.Tensor:
        return super().dequantize(torch.float32)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return unrotate_weight(self.rotated_weight(), self.sign_vector(), self.block).to(dtype)


# The affine kernels multiply by the stored (rotated) codes and would need the activations rotated
# first; until a backend does that, this format runs the modes of every format, through dequantize().
HadamardLinear.backends = dict(CompressedLinear.backends)
