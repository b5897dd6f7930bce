"""Modules imported on first use: the families reason about checkpoints (configs, token
counts, frame defaults) without torch, which `llava models info` never needs, and use
torch's tensors only when they prepare media or run a model."""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """Stands for the module ``name``; imports it at the first attribute looked up."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def __getattr__(self, attr: str):
        module = importlib.import_module(self.__name__)
        value = getattr(module, attr)
        return value


def lazy(name: str) -> types.ModuleType:
    return LazyModule(name)
