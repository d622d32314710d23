"""transformers integration: `from_pretrained` on a llava-fa checkpoint returns the compressed model.

`quantization_config` in config.json names the method and, per compressed module, its storage
format and parameters. Before the weights load, the quantizer swaps each listed `nn.Linear` of the
(meta-device) skeleton for an empty module of that format; the ordinary safetensors loading then
fills its buffers. Registration happens once, on `import llava_fa`.

Loading without `import llava_fa` must fail, never run. What transformers 5 does on its own:
an unknown `quant_method` is only a warning ("Unknown quantization type ... we will skip the
quantization", `AutoHfQuantizer.supports_quant_method`), the plain skeleton is built, our stored
tensors (`qweight`, `scales`, ...) are "unexpected" and each `weight` they replace is "missing", and
missing weights are freshly initialized with a logged report: a model of random decoder weights.
Only size mismatches and conversion errors raise. So new checkpoints carry a load guard in
config.json: `transformers_weights` (the key naming an explicit weights file) set to a sentence that
is no safetensors file name. transformers reads that key before any weight and raises
"The transformers file in the config seems to be incorrect: ... : <our sentence>" (ValueError),
which tells the user to `import llava_fa`. With llava_fa imported, our quantizer is built first
(`get_hf_quantizer`) and its `update_attn_implementation(config)`, the one hook that sees the model
config before the weight files are resolved, removes the guard; the weights then load as usual.
Checkpoints written before the guard (tests/fixtures/legacy_v1) have no such key and load as they
did; a checkpoint re-saved by transformers' own save_pretrained loses the key (config.save_pretrained
drops `transformers_weights`), so it loads with llava_fa as before but is unguarded without it.
`io.checkpoint.read_config` leaves the guard out of the dict it returns, so copies of a config
(exports, fingerprints) never carry it. Rejected alternatives: another `quant_method` name (any
unknown one is skipped the same way) and a dense `weight` of the wrong shape stored beside the codes
(transformers raises on the size mismatch, but with its own message, and it costs bytes).
"""

from __future__ import annotations

import re
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
# The load guard (see the module docstring): config.json key and value. The value must not end in
# .safetensors or .safetensors.index.json, so transformers refuses it as a file name.
LOAD_GUARD_KEY = "transformers_weights"
LOAD_GUARD = ("llava-fa checkpoint: run `import llava_fa` before from_pretrained (pip install llava-fa); "
              "without it the compressed layers would load as random weights")


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


def _lift_guard(parent, hook: str, config):
    if getattr(config, LOAD_GUARD_KEY, None) == LOAD_GUARD:
        delattr(config, LOAD_GUARD_KEY)
    base = getattr(parent, hook, None)
    return base(config) if base is not None else config


class LlavaFAHfQuantizer(HfQuantizer):
    requires_calibration = True  # loads compressed checkpoints; compressing is `llava-fa compress`

    # get_hf_quantizer hands the config to the quantizer before the weight files are resolved, through
    # a hook whose name changed across transformers 5.x (update_tp_plan and update_ep_plan up to 5.17,
    # update_attn_implementation in 5.24): each of them lifts the load guard, then does its usual work.
    def update_attn_implementation(self, config):
        return _lift_guard(super(), "update_attn_implementation", config)

    def update_tp_plan(self, config):
        return _lift_guard(super(), "update_tp_plan", config)

    def update_ep_plan(self, config):
        return _lift_guard(super(), "update_ep_plan", config)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if checkpoint_files:
            check_checkpoint_files(checkpoint_files, self.quantization_config, model)
        install_modules(model, self.quantization_config)
        return model

    def update_weight_conversions(self, weight_conversions, *args, **kwargs):
        """transformers 5.24 passes the model (5.17 does not, and has no conversion to drop)."""
        model = args[0] if args else kwargs.get("model")
        kept = weight_conversions if model is None else without_fused_expert_converters(weight_conversions, model)
        return super().update_weight_conversions(kept, *args, **kwargs)

    def _process_model_after_weight_loading(self, model, **kwargs):
        check_loaded(model, self.quantization_config)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def without_fused_expert_converters(weight_conversions: list, model) -> list:
    """Drop the converters whose targets are fused expert parameters the skeleton no longer has.

    A family's conversion mapping may rewrite its fused experts on load (Qwen3-VL-MoE transposes
    `mlp.experts.gate_up_proj`); its patterns also match the per-expert names a compressed
    checkpoint stores (`mlp.experts.gate_up_proj.0.qweight`), which it then fails to transpose.
    Once install_modules has linearized the experts, such a target is a module, not a parameter."""
    params = "\n".join(name for name, _ in model.named_parameters())
    modules = "\n".join(name for name, _ in model.named_modules())
    from transformers.core_model_loading import WeightConverter  # a renaming (WeightRenaming) is always kept

    return [c for c in weight_conversions
            if not (isinstance(c, WeightConverter) and c._original_target_patterns
                    and all(_names_module_only(t, params, modules) for t in c._original_target_patterns))]


def _names_module_only(pattern: str, params: str, modules: str) -> bool:
    regex = re.compile(rf"{pattern}$", re.MULTILINE)
    return regex.search(params) is None and regex.search(modules) is not None


def register() -> None:
    """Make transformers recognize quant_method "llava_fa" (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(LlavaFAConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(LlavaFAHfQuantizer)


register()
