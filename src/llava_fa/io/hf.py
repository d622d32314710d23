"""transformers integration: `from_pretrained` on a llava-fa checkpoint returns the compressed model.

`quantization_config` in config.json names the method and, per compressed module, its storage
format and parameters. Before the weights load, the quantizer swaps each listed `nn.Linear` of the
(meta-device) skeleton for an empty module of that format; the ordinary safetensors loading then
fills its buffers. Registration happens once, on `import llava_fa`.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from llava_fa.io.modules import check_checkpoint_files, check_loaded, install_modules

QUANT_METHOD = "llava_fa"
FORMAT_VERSION = 1


class LlavaFAConfig(QuantizationConfigMixin):
    """The `quantization_config` of a llava-fa checkpoint.

    modules: {module name: {"format": str, "in_features": int, "out_features": int, "bias": bool,
    "params": {...}}}; method / method_config: how they were made (informational at load time).
    """

    def __init__(self, method: str = "", method_config: dict | None = None, modules: dict | None = None,
                 format_version: int = FORMAT_VERSION, targets: list | None = None, ignore: list | None = None,
                 **kwargs: Any):
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.method = method
        self.method_config = dict(method_config or {})
        self.targets = list(targets or [])
        self.ignore = list(ignore or [])
        self.modules = dict(modules or {})
        kwargs.pop("quant_method", None)
        self.extra = kwargs  # unknown keys from newer writers, kept so a re-save does not drop them

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


class LlavaFAHfQuantizer(HfQuantizer):
    requires_calibration = True  # loads compressed checkpoints; compressing is `llava-fa compress`

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if checkpoint_files:
            check_checkpoint_files(checkpoint_files, self.quantization_config, model)
        install_modules(model, self.quantization_config)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        check_loaded(model, self.quantization_config)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Make transformers recognize quant_method "llava_fa" (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(LlavaFAConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(LlavaFAHfQuantizer)


register()
