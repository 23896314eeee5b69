"""Package namespaces that import their submodules on first use (PEP 562).

``medzsad.data`` and ``medzsad.backbone`` re-export names from modules that load torch; importing those
eagerly made ``medzsad prepare list`` and a config error wait seconds for torch. With
:func:`lazy_exports` a package lists where each name lives, and the submodule is imported the first time
the name is read, so ``import medzsad.data.errors`` costs only that module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, where ``exports`` maps a name to its submodule.

    Args:
        package: the package's ``__name__``.
        exports: ``{"ManifestDataset": "datasets", ...}``: the name and the submodule (relative) holding it.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
