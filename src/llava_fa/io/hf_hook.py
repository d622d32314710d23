"""Register the llava-fa quantizer with transformers on `import llava_fa`, without importing
transformers (seconds) when nothing else needs it: if transformers' quantizer registry is already
imported, register now; otherwise register right after it is first imported."""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

_TARGET = "transformers.quantizers.auto"


def _register() -> None:
    if "llava_fa.io.hf" in sys.modules:
        return  # imported (or being imported): it registers itself when its import completes
    try:
        import llava_fa.io.hf  # noqa: F401  (registers on import)
    except Exception as e:  # a transformers API change must not break importing transformers
        logging.getLogger("llava_fa").warning("could not register the llava_fa quantizer with transformers: %s", e)


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if _TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
