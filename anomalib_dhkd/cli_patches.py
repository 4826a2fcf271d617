"""Fixes to anomalib 2.7's command line, applied by the start-up hook when ``anomalib.cli.cli`` is imported.

* **Seeding.** anomalib 2.7's CLI declares ``--seed_everything`` ("run seed_everything with this value before
  classes instantiation") but never calls ``seed_everything``: two identical seeded ``anomalib train`` runs built
  models with different random weights, shuffled the data differently and ended with different metrics. The patch
  seeds, as the option's help says, right before the model, data and engine are built.
* **One-line argument errors.** jsonargparse wraps an error raised by a model's constructor into a 200-line
  traceback of its union-type matching. A plugin model's constructor error is printed as one line.
* **Checks before work** (family models only): ``fit``, ``train``, ``validate`` and ``test`` check the datamodule's
  files with :mod:`anomalib_dhkd.tools.preflight` before anything downloads or trains; ``export`` checks that its
  folder can be written before it traces the model.
"""

import re
import sys
from types import ModuleType
from typing import Any

PLUGIN_PACKAGE = "anomalib_dhkd."
DATA_SUBCOMMANDS = frozenset({"fit", "train", "validate", "test"})
PATCHED = "_anomalib_dhkd_patched"


def patch_cli(cli_module: ModuleType) -> None:
    """Apply every fix to ``cli_module.AnomalibCLI`` (idempotent).

    Args:
        cli_module: The imported ``anomalib.cli.cli`` module; its ``AnomalibCLI`` class is patched in place.

    """
    cli_class = cli_module.AnomalibCLI
    if getattr(cli_class, PATCHED, False):
        return
    seed_before_instantiation(cli_class)
    one_line_argument_errors(cli_class)
    check_before_running(cli_class)
    setattr(cli_class, PATCHED, True)


def seed_before_instantiation(cli_class: type) -> None:
    """Make ``AnomalibCLI`` apply an integer ``--seed_everything`` before it instantiates classes.

    Args:
        cli_class: ``AnomalibCLI``; its ``before_instantiate_classes`` is wrapped.

    """
    original = cli_class.before_instantiate_classes

    def before_instantiate_classes(self: Any) -> None:
        seed = self.config.get(str(self.subcommand), self.config).get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool):
            from lightning.pytorch import seed_everything

            seed_everything(seed, workers=True)
        original(self)

    before_instantiate_classes.__doc__ = original.__doc__
    cli_class.before_instantiate_classes = before_instantiate_classes


def constructor_error(message: str) -> str | None:
    r"""Pick the constructor's own error out of jsonargparse's union-type message, as one line.

    jsonargparse tries each type of ``--model`` (``None``, then the model class) and lists every failure under
    ``Errors:``; the constructor's error is the item that is not ``Expected a <class 'NoneType'>``.

    Args:
        message: jsonargparse's error message.

    Returns:
        The constructor's error in one line (several joined by ``"; "``), or ``None`` if the message lists none.

    Example:
        >>> constructor_error("No match\nErrors:\n - Expected a <class 'NoneType'>\n - Bad layer.\nGiven value: x")
        'Bad layer.'

    """
    listed = message.partition("\nErrors:\n")[2].partition("\nGiven value")[0]
    items = [" ".join(item.split()) for item in re.split(r"^\s*- ", listed, flags=re.MULTILINE)]
    return "; ".join(item for item in items if item and not item.startswith("Expected a <class 'NoneType'>")) or None


def one_line_argument_errors(cli_class: type) -> None:
    """Make ``AnomalibCLI`` print the constructor error of a plugin model as ``error: <message>`` and exit with 2.

    Other models' errors, and errors that are not a constructor's, propagate unchanged.

    Args:
        cli_class: ``AnomalibCLI``; its ``instantiate_classes`` is wrapped.

    """
    original = cli_class.instantiate_classes

    def instantiate_classes(self: Any) -> None:
        try:
            original(self)
        except ValueError as error:
            model = self.config.get(str(self.subcommand), self.config).get("model")
            message = constructor_error(str(error))
            if message is None or not str(getattr(model, "class_path", "")).startswith(PLUGIN_PACKAGE):
                raise
            print(f"error: {model.class_path.rpartition('.')[2]}: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    instantiate_classes.__doc__ = original.__doc__
    cli_class.instantiate_classes = instantiate_classes


def check_before_running(cli_class: type) -> None:
    """Make ``AnomalibCLI`` check a family model's data (or export folder) before it runs the subcommand.

    Args:
        cli_class: ``AnomalibCLI``; its ``_run_subcommand`` is wrapped.

    """
    original = cli_class._run_subcommand

    def _run_subcommand(self: Any) -> None:
        from anomalib_dhkd.models.base import KnowledgeDistillationModule

        if isinstance(getattr(self, "model", None), KnowledgeDistillationModule):
            if self.subcommand in DATA_SUBCOMMANDS:
                stop_on_bad_data(self)
            elif self.subcommand == "export":
                stop_on_unwritable_export_folder(self)
        original(self)

    _run_subcommand.__doc__ = original.__doc__
    cli_class._run_subcommand = _run_subcommand


def stop_on_bad_data(cli: Any) -> None:
    """Exit with status 1 and every problem of the datamodule's files, before anything downloads or trains.

    Warnings alone (an empty mask) are printed and the run goes on.

    Args:
        cli: The ``AnomalibCLI`` instance, with its ``datamodule`` instantiated.

    Raises:
        SystemExit: With status 1 if :func:`~anomalib_dhkd.tools.preflight.data_report` finds a problem.

    """
    from anomalib_dhkd.tools.preflight import data_report

    message, stop = data_report(getattr(cli, "datamodule", None))
    if message is not None:
        print(message, file=sys.stderr)
    if stop:
        raise SystemExit(1)


def stop_on_unwritable_export_folder(cli: Any) -> None:
    """Exit with status 2 and one line when the export folder cannot be written, before the model is traced.

    Args:
        cli: The ``AnomalibCLI`` instance of an ``export`` run.

    Raises:
        SystemExit: With status 2 if the folder cannot be written.

    """
    from anomalib_dhkd.tools.preflight import check_writable, export_folder

    try:
        check_writable(export_folder(cli.config_init[cli.subcommand]), option="--export_root")
    except PermissionError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
