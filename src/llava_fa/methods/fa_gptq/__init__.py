"""`fa-gptq`: LLaVA-FA's PolarQuant with GPTQ's error feedback (ours; see docs/RESULTS.md).

LLaVA-FA rounds every spectral coefficient on its own. With the DFT along the output axis only
(`rfft_out`: each column of W becomes a column of (m/2+1) complex coefficients), the layer loss
tr(D H D^T) keeps the same real Hessian H, because the transform is unitary on the other side. So
GPTQ's column loop (quantizers/feedback.py) runs unchanged on complex columns: round column j with
PolarQuant, divide its error by U_jj and push it onto the columns still to come (U: upper Cholesky
factor of H^-1). A group's scales are fixed when the loop reaches its first column (as GPTQ fixes
its grids); the Lloyd magnitude levels are fitted once on the unquantized spectrum. The DC and
Nyquist rows are real and take symmetric real codes. Stored as a plain `fourier` layer (transform
rfft_out, rank 0) through `FourierLinear.from_codes`.

The default, `-O axis=input`, runs the feedback on the input-axis spectrum (transform rfft) instead:
there the Hessian becomes T H T^T in the real DFT basis T, and each (Re, Im) pair is rounded jointly
and fed back as a 2-column block (input_axis.py). It measured better than the output axis above
(`-O axis=output`) end to end (docs/results/fa_gptq_input_cpu) and is the form the fused kernel runs.

`-O bpw=B` picks each layer's bits (mag_bits, phase_bits, group_size) from a short table of forms
measured end to end: the costliest one that fits B, bits counted as the format stores them (budget.py).
"""

from llava_fa.methods.fa_gptq.config import FAGPTQConfig
from llava_fa.methods.fa_gptq.method import FAGPTQ, spectrum_codes_with_feedback

__all__ = ["FAGPTQConfig", "FAGPTQ", "spectrum_codes_with_feedback"]
