"""Module-level ``__getattr__`` that imports a package's public names from a submodule on first access."""

import importlib
from collections.abc import Callable, Sequence
from typing import Any


def lazy_attributes(package: str, source: str, names: Sequence[str]) -> Callable[[str], Any]:
    """Return a ``__getattr__`` for ``package`` that takes ``names`` from module ``source``, imported when first used.

    Keeps ``import package`` cheap (no torch) and ``python -m package.source`` free of double-import warnings.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module attribute hook's own name)
        if name in names:
            return getattr(importlib.import_module(source), name)
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__
