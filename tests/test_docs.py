"""The user documentation stays short, free of commit histories, and its quick commands run."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
MODEL_READMES = sorted((REPO_ROOT / "anomalib_dhkd" / "models").glob("*/README.md"))
MAX_LINES = 250
# A commit hash: 7 to 40 hexadecimal characters with at least one digit and one letter.
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
# Commands of README's code blocks that run offline in seconds.
QUICK_COMMANDS = re.compile(
    r"^(python -m anomalib_dhkd\.(weights check|check |\S+ --help)|anomalib train --model\.help)"
)


def readme_commands(path: Path) -> list[str]:
    """The commands of the ``bash`` code blocks of ``path``, comments dropped and continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.DOTALL)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("path", [README, *MODEL_READMES], ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_docs_are_short_and_name_no_commit(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    assert COMMIT_HASH.findall(text) == []


def test_the_commit_pattern_finds_hashes_and_not_numbers() -> None:
    assert COMMIT_HASH.findall("at 59c42f9 and 1bc56db, 0.9853, 2026-12-06, 1e-6, deadbeef") == ["59c42f9", "1bc56db"]


def test_every_model_has_a_readme_linked_from_the_main_one() -> None:
    assert MODEL_READMES
    for path in MODEL_READMES:
        assert str(path.relative_to(REPO_ROOT)) in README.read_text()


@pytest.mark.usefixtures("pretrained_weights")
@pytest.mark.parametrize("command", [c for c in readme_commands(README) if QUICK_COMMANDS.match(c)])
def test_quick_readme_commands_exit_0(command: str) -> None:
    words = shlex.split(command)
    if any("../shared/data" in word for word in words) and not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    executable = [sys.executable] if words[0] == "python" else [str(Path(sys.executable).with_name(words[0]))]
    result = subprocess.run(
        executable + words[1:],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_quick_commands_are_found() -> None:
    found = [c for c in readme_commands(README) if QUICK_COMMANDS.match(c)]
    assert any("weights check" in c for c in found)
    assert any(c.startswith("python -m anomalib_dhkd.check ") for c in found)
    assert any("--model.help" in c for c in found)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(c for c in readme_commands(README) if c.endswith(" test"))
    ci_commands = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("bash ")]
    assert ci_commands, "CI runs no command"
    assert f"{ci_commands[0]} ".startswith(f"{test_command} ")  # README's command, perhaps with pytest options
