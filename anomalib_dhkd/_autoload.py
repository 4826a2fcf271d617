"""Start-up hook that registers the plugin's models with anomalib and fixes the seeding of its CLI.

``anomalib_dhkd_autoload.pth`` (installed next to the package) imports this module at interpreter start. It imports
nothing heavy: it only installs a meta-path finder that waits for ``anomalib.models``. Once that module has
executed, :func:`anomalib_dhkd.models.register` adds ``Dhkd`` to it, so that

* ``anomalib train --model Dhkd`` (jsonargparse resolves subclasses that are imported),
* ``anomalib.models.get_model("dhkd")`` and YAML ``class_path: Dhkd``, and
* ``anomalib benchmark`` (looks names up in ``anomalib.models``)

all find the model without the user importing the plugin. Set ``ANOMALIB_DHKD_AUTOLOAD=0`` to switch it off.

When ``anomalib.cli.cli`` has executed, :func:`anomalib_dhkd.cli_patches.patch_cli` makes its ``--seed_everything``
take effect (anomalib 2.7 declares the option but never applies it), prints the plugin's argument errors in one line
and checks a family model's data or export folder before the subcommand runs.

``anomalib_dhkd.models`` registers itself at the end of its own import. When ``anomalib.models`` is first imported
*by* a plugin module that is still initialising, the hook leaves registration to that import instead of starting
a circular one.
"""

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

_TARGET = "anomalib.models"
_CLI = "anomalib.cli.cli"
_PLUGIN_MODELS = "anomalib_dhkd.models"


def _plugin_initialising() -> bool:
    """Whether a module of the plugin is part-way through its import."""
    return any(
        name.startswith("anomalib_dhkd.") and getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
    )


def _import_plugin_models() -> None:
    """Import the plugin's models, which register themselves, unless the plugin is mid-import already."""
    if not _plugin_initialising():
        importlib.import_module(_PLUGIN_MODELS)


def _patch_cli(module: ModuleType) -> None:
    """Apply the plugin's fixes to anomalib's CLI module."""
    from anomalib_dhkd.cli_patches import patch_cli

    patch_cli(module)


class _RegisteringLoader(importlib.abc.Loader):
    """Run the real loader of ``anomalib.models`` (or ``anomalib.cli.cli``), then register the models (or patch)."""

    def __init__(self, loader: importlib.abc.Loader, fullname: str = _TARGET) -> None:
        self._loader = loader
        self._fullname = fullname

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        if self._fullname == _CLI:
            _patch_cli(module)
        else:
            _import_plugin_models()


class _AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Find ``anomalib.models`` and ``anomalib.cli.cli`` with the regular path finder and wrap their loaders."""

    def __init__(self) -> None:
        self._waiting = {_TARGET, _CLI}

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._waiting:
            return None
        self._waiting.discard(fullname)
        if not self._waiting:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader, fullname)
        return spec


def install() -> None:
    """Install the finder unless disabled, or register right away if ``anomalib.models`` is already imported.

    Idempotent: a second call installs no second finder. ``anomalib.cli.cli``, if already imported, is patched at once.
    """
    if os.environ.get("ANOMALIB_DHKD_AUTOLOAD", "1") == "0":
        return
    if _TARGET in sys.modules and _CLI in sys.modules:
        _import_plugin_models()
        _patch_cli(sys.modules[_CLI])
    elif not any(isinstance(finder, _AnomalibModelsFinder) for finder in sys.meta_path):
        finder = _AnomalibModelsFinder()
        for name, apply in ((_TARGET, lambda _module: _import_plugin_models()), (_CLI, _patch_cli)):
            if name in sys.modules:
                finder._waiting.discard(name)
                apply(sys.modules[name])
        if finder._waiting:
            sys.meta_path.insert(0, finder)


install()
