"""A fix to anomalib 2.7's command line, applied by the start-up hook when ``anomalib.cli.cli`` is imported.

anomalib 2.7's CLI declares ``--seed_everything`` ("run seed_everything with this value before classes
instantiation") but never calls ``seed_everything``: two identical seeded ``anomalib train`` runs built models with
different random weights, shuffled the data differently and ended with different metrics. The patch seeds, as the
option's help says, right before the model, data and engine are built.
"""

from types import ModuleType
from typing import Any


def seed_before_instantiation(cli_module: ModuleType) -> None:
    """Make ``AnomalibCLI`` apply an integer ``--seed_everything`` before it instantiates classes (idempotent)."""
    cli_class = cli_module.AnomalibCLI
    original = cli_class.before_instantiate_classes
    if getattr(original, "_seeds", False):
        return

    def before_instantiate_classes(self: Any) -> None:
        seed = self.config.get(str(self.subcommand), self.config).get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool):
            from lightning.pytorch import seed_everything

            seed_everything(seed, workers=True)
        original(self)

    before_instantiate_classes._seeds = True  # type: ignore[attr-defined]
    before_instantiate_classes.__doc__ = original.__doc__
    cli_class.before_instantiate_classes = before_instantiate_classes
