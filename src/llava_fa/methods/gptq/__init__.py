"""`gptq`: Hessian-aware rounding with error feedback (Frantar et al., 2022); see method.py."""

from llava_fa.methods.gptq.config import GPTQConfig
from llava_fa.methods.gptq.method import GPTQ, gptq_quantize

__all__ = ["GPTQConfig", "GPTQ", "gptq_quantize"]
