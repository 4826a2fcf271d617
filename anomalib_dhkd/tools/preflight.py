"""Checks the command line runs before a family model trains, tests or exports: data and output folders.

anomalib reads images lazily, so a truncated PNG fails part-way through an epoch without naming its file, an empty
``train/good`` fails with ``num_samples=0``, a defect image without its mask with a pandas error, and a mistyped
``--data.category`` starts a download of MVTec AD. Checking the datamodule's folders with
:func:`anomalib_dhkd.tools.check.check_dataset` before anything runs turns each of them into one line that names the
file and the fix. Export checks that its folder can be written before it traces the model.
"""

from pathlib import Path
from typing import Any

CHECK_COMMAND = "python -m anomalib_dhkd.check"


def mvtec_problems(root: Path, category: str, known_categories: tuple[str, ...]) -> list[str]:
    """Problems of an MVTec-layout category folder; a category that is neither present nor known is one.

    A known category that is missing is left to anomalib, which downloads it; an unknown one cannot be downloaded, so
    the lines name the categories that are there.

    Args:
        root: The datamodule's ``root``.
        category: The datamodule's ``category``.
        known_categories: The categories the datamodule can download.

    Returns:
        One line per problem (``PROBLEM ...``) or warning (``WARNING ...``), empty when the folder is fine or will
        be downloaded.

    Example:
        >>> mvtec_problems(Path("no/such/root"), "bottle", ("bottle",))
        []

    """
    from anomalib_dhkd.tools.check import check_dataset

    folder = root / category
    if not folder.is_dir():
        if category in known_categories:
            return []
        present = sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
        return [
            f"{folder}: no such category folder, and '{category}' is not a category anomalib can download. "
            f"Fix: check --data.category (folders in {root}: {', '.join(present) or 'none'})."
        ]
    report = check_dataset(root, category=category)
    return [f"{problem.label} {problem}" for problem in report.problems]


def folder_problems(root: Path | None, folders: list[str | Path | None]) -> list[str]:
    """Problems of the image folders of a ``Folder`` datamodule (paths relative to ``root`` or absolute).

    Args:
        root: The datamodule's ``root``, or ``None`` when the folders are given in full.
        folders: The datamodule's normal, abnormal and normal test folders; ``None`` entries are skipped.

    Returns:
        One line per problem, empty when every folder is fine.

    Example:
        >>> folder_problems(Path("no"), ["such", None])
        ['PROBLEM no/such: no such folder. Fix: pass the dataset root folder.']

    """
    from anomalib_dhkd.tools.check import check_dataset

    lines = []
    for folder in filter(None, folders):
        path = Path(folder) if root is None else Path(root) / folder
        lines += [f"{problem.label} {problem}" for problem in check_dataset(path).problems]
    return lines


def datamodule_problems(datamodule: object) -> list[str]:
    """Problems of an ``MVTecAD`` or ``Folder`` datamodule's files, one line each; other datamodules are not checked.

    Args:
        datamodule: The datamodule the command line built.

    Returns:
        One line per problem, empty when the files are fine or the datamodule is of another type.

    Example:
        >>> datamodule_problems(object())
        []

    """
    from anomalib.data import Folder, MVTecAD
    from anomalib.data.datasets.image.mvtecad import CATEGORIES

    if isinstance(datamodule, MVTecAD):
        return mvtec_problems(Path(datamodule.root), datamodule.category, CATEGORIES)
    if isinstance(datamodule, Folder):
        folders = [datamodule.normal_dir, datamodule.abnormal_dir, datamodule.normal_test_dir]
        return folder_problems(datamodule.root, [item for f in folders for item in (f if isinstance(f, list) else [f])])
    return []


def data_report(datamodule: object) -> tuple[str | None, bool]:
    """Describe bad data before a run: every problem and warning, then the full report's command.

    Args:
        datamodule: The datamodule the command line built.

    Returns:
        The text to print (``None`` when the data has no finding) and whether the run must stop: problems stop it,
        warnings alone (``WARNING ...`` lines, e.g. an empty mask) do not.

    Example:
        >>> data_report(object())
        (None, False)

    """
    lines = datamodule_problems(datamodule)
    if not lines:
        return None, False
    where = getattr(datamodule, "root", "")
    category = getattr(datamodule, "category", None)
    command = f"{CHECK_COMMAND} {where}" + (f" --category {category}" if category else "")
    problems = sum(not line.startswith("WARNING") for line in lines)
    if not problems:
        return "\n".join([*lines, f"warning: {len(lines)} warning(s) about the data (full report: {command})."]), False
    return "\n".join([*lines, f"error: the data has {problems} problem(s); fix them (full report: {command})."]), True


def check_writable(folder: Path, option: str = "--out") -> None:
    """Fail before any work if ``folder`` cannot be created or written to.

    Args:
        folder: The output folder.
        option: The command-line option that sets it, named in the fix.

    Raises:
        PermissionError: Naming the folder and the option to change.

    Example:
        >>> import tempfile
        >>> check_writable(Path(tempfile.mkdtemp()) / "out")

    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        msg = f"Cannot write to the output folder {folder} ({type(error).__name__}); choose another {option}."
        raise PermissionError(msg) from error


def export_folder(config: dict[str, Any]) -> Path:
    """Return the folder ``anomalib export`` writes to: ``--export_root``, else the trainer's ``default_root_dir``.

    Args:
        config: The parsed ``export`` subcommand's arguments.

    Returns:
        The export folder (anomalib's default ``results`` when neither is given).

    Example:
        >>> str(export_folder({"export_root": "exports"})), str(export_folder({"default_root_dir": "runs"}))
        ('exports', 'runs')

    """
    export_root = config.get("export_root")
    if export_root is None:
        export_root = (
            config.get("default_root_dir") or (config.get("trainer") or {}).get("default_root_dir") or "results"
        )
    return Path(export_root)
