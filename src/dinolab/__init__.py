"""dinolab: self-supervised Vision Transformer pretraining in the DINO family.

Subpackages load on first use (`dinolab.hub`, `dinolab.train`, ...), so `import dinolab` and the CLI's
start stay cheap: nothing heavy (matplotlib, scipy, TensorBoard) is imported until something needs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"
__all__ = ["config", "data", "eval", "hub", "io", "losses", "models", "train", "viz"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"dinolab.{name}")
    raise AttributeError(f"module 'dinolab' has no attribute {name!r}")
