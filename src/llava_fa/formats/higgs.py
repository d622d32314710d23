"""`higgs`: vector codes on an MSE-optimal Gaussian grid of a Hadamard-rotated weight (HIGGS).

W = W_r R with R = H_g diag(d) acting on the input dimension: d (n,) random signs, H_g block-diagonal
with orthonormal Sylvester-Hadamard blocks of `group_size` g (a power of two dividing n), so each
group of g consecutive inputs of a row is rotated on its own. A rotated group divided by its RMS
(its norm / sqrt(g), which the rotation keeps) has entries close to N(0, 1); it is cut into
vectors of p = 1 or 2 consecutive entries and each is replaced by the index of the nearest point of
a grid of 2**(p*bits) points, MSE-optimal for N(0, I_p) (methods/higgs/grids.py). Dequantization:
W_r[i, group j] = scale[i, j] * grid[codes[i, j, :]] (the p entries of each vector), then W = W_r R.

Stored tensors (all counted by storage_bits(); m outputs, n inputs, K = 2**(p*bits)):
- `qweight` uint8 (m, ceil(n/p/8)*p*bits): one p*bits-bit code per vector, packed row by row
  (quantizers/packing.py);
- `scales` int16 (m, n/g): float16 bit patterns of each group's RMS (integers, so that a
  `model.to(dtype)` cannot change them; as the `affine` format);
- `grid` int16 (K, p): the float16 bit patterns of the grid, stored in every layer so that a
  checkpoint never depends on how the grid was computed (2 * K * 16 bits: 8192 bits for p=2,
  bits=4, 0.002 bpw of a 2048 x 2048 layer);
- `signs` uint8 (ceil(n/8),): the sign vector d, one bit per input (1 = negative), stored rather
  than the seed that drew it, as the `hadamard` format.

Forward modes: those of every format (formats/base.py): "dequant" rebuilds W_r from the codes and
rotates it back at every call, "cached" keeps that dense W, "auto" does the first on CUDA and the
second on CPU. FLUTE (HIGGS's kernel) would instead rotate the activation, y = (R x) W_r^T, and
look the codes up in shared memory; no such backend exists here yet.
"""

from __future__ import annotations

import torch

from llava_fa.formats.base import CompressedLinear
from llava_fa.formats.registry import register_format
from llava_fa.quantizers import pack, packed_width, unpack
from llava_fa.transforms.hadamard import unrotate_weight


def check_higgs_params(in_features: int, bits: int, p: int, group_size: int) -> None:
    """ValueError unless p is 1 or 2, p*bits is 1..8 and the group is a power of two >= p dividing n."""
    if p not in (1, 2):
        raise ValueError(f"higgs: p must be 1 or 2, got {p}")
    if not 1 <= p * bits <= 8:
        raise ValueError(f"higgs: p * bits must be from 1 to 8 (codes of at most 8 bits), got p={p}, bits={bits}")
    if group_size < p or group_size & (group_size - 1) or in_features % group_size:
        raise ValueError(f"higgs: group_size {group_size} must be a power of two, at least p={p}, dividing the "
                         f"{in_features} inputs")


@register_format
class HiggsLinear(CompressedLinear):
    format = "higgs"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, bits: int, p: int,
                 group_size: int):
        super().__init__(in_features, out_features, bias)
        self.bits, self.p, self.group_size = int(bits), int(p), int(group_size)
        check_higgs_params(in_features, self.bits, self.p, self.group_size)
        i16 = torch.int16
        self.register_buffer("qweight", torch.zeros(out_features, packed_width(in_features // self.p, self.code_bits),
                                                    dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // self.group_size, dtype=i16))
        self.register_buffer("grid", torch.zeros(1 << self.code_bits, self.p, dtype=i16))
        self.register_buffer("signs", torch.zeros(packed_width(in_features, 1), dtype=torch.uint8))

    @property
    def code_bits(self) -> int:
        return self.p * self.bits

    def params(self) -> dict:
        return {"bits": self.bits, "p": self.p, "group_size": self.group_size}

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, grid: torch.Tensor, signs: torch.Tensor, *,
                   bits: int, bias: torch.Tensor | None = None) -> "HiggsLinear":
        """Build from codes (m, n/p) of grid points, the scales (m, n/g), the grid (2**(p*bits), p) and
        the sign vector d (n,) of the rotation. Scales and grid are stored as float16."""
        out_f, n_vec = codes.shape
        p = grid.shape[1]
        in_f = n_vec * p
        mod = cls(in_f, out_f, bias is not None, bits=bits, p=p, group_size=in_f // scale.shape[1])
        if grid.shape[0] != 1 << mod.code_bits:
            raise ValueError(f"a grid of {grid.shape[0]} points does not match codes of {mod.code_bits} bits")
        mod.qweight = pack(codes.to(torch.int64), mod.code_bits)
        mod.scales = scale.to(torch.float16).view(torch.int16).contiguous()
        mod.grid = grid.to(torch.float16).view(torch.int16).contiguous()
        mod.signs = pack((signs < 0).to(torch.int64), 1)
        mod.set_bias(bias)
        return mod

    def codes(self) -> torch.Tensor:
        return unpack(self.qweight, self.code_bits, self.in_features // self.p)

    def grid_values(self) -> torch.Tensor:
        return self.grid.view(torch.float16).float()

    def scale_values(self) -> torch.Tensor:
        return self.scales.view(torch.float16).float()

    def sign_vector(self) -> torch.Tensor:
        return 1.0 - 2.0 * unpack(self.signs, 1, self.in_features).float()

    def rotated_weight(self) -> torch.Tensor:
        """W_r = W R^T: the grid points of the codes times each group's scale (float32)."""
        w = self.grid_values()[self.codes().long()].reshape(self.out_features, -1, self.group_size)
        return (w * self.scale_values()[..., None]).reshape(self.out_features, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return unrotate_weight(self.rotated_weight(), self.sign_vector(), self.group_size).to(dtype)
