"""Compression methods: one subpackage per method (config dataclass, implementation, registration).

Adding a method means adding a folder here; `discover()` imports every subpackage. Methods take the
statistics of `llava_fa.calibration.stats` and return modules of a format in `llava_fa.formats`.
"""

from llava_fa.calibration.stats import LayerStats
from llava_fa.methods.base import (
    METHODS,
    Method,
    MethodConfig,
    available_methods,
    build_config,
    discover,
    get_method,
    register_method,
)

__all__ = ["METHODS", "LayerStats", "Method", "MethodConfig", "available_methods", "build_config", "discover",
           "get_method", "register_method"]
