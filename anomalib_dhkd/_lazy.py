"""Module-level ``__getattr__`` that imports a package's public names from a submodule on first access."""

import importlib
from collections.abc import Callable, Sequence
from typing import Any


def lazy_attributes(package: str, source: str, names: Sequence[str]) -> Callable[[str], Any]:
    """Return a ``__getattr__`` for ``package`` that takes ``names`` from module ``source``, imported when first used.

    Keeps ``import package`` cheap (no torch) and ``python -m package.source`` free of double-import warnings.

    Args:
        package: Name of the package the hook serves, used in the error message.
        source: Dotted name of the module that defines ``names``.
        names: Attribute names the hook resolves; any other name raises ``AttributeError`` as a module would.

    Returns:
        A function to assign to the package's module-level ``__getattr__``.

    Example:
        >>> __getattr__ = lazy_attributes("shapes", "math", ["pi"])
        >>> round(__getattr__("pi"), 2)
        3.14
        >>> __getattr__("tau")
        Traceback (most recent call last):
        ...
        AttributeError: module 'shapes' has no attribute 'tau'

    """

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module attribute hook's own name)
        if name in names:
            return getattr(importlib.import_module(source), name)
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__
