"""Compression methods: one subpackage per method (config dataclass, implementation, registration).

Adding a method means adding a folder here; `discover()` imports every subpackage.
"""

from llava_fa.methods.base import (
    METHODS,
    SQ,
    XTX,
    LayerStats,
    Method,
    MethodConfig,
    available_methods,
    build_config,
    discover,
    get_method,
    register_method,
)

__all__ = ["METHODS", "SQ", "XTX", "LayerStats", "Method", "MethodConfig", "available_methods", "build_config",
           "discover", "get_method", "register_method"]
