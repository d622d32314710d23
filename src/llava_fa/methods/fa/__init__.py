"""`fa`: LLaVA-FA (Fourier low-rank + PolarQuant + ODC). Importing registers the method and the
`fourier` storage format."""

from llava_fa.methods.fa.budget import plan_layer
from llava_fa.methods.fa.config import FAConfig
from llava_fa.methods.fa.fit import FitResult, fit_layer
from llava_fa.methods.fa.lowrank import fourier_svd
from llava_fa.methods.fa.method import FA
from llava_fa.methods.fa.odc import column_scales, row_scales

__all__ = ["FA", "FAConfig", "FitResult", "column_scales", "fit_layer", "fourier_svd", "plan_layer", "row_scales"]
