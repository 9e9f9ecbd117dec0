"""The CLI surface: every command documented, errors as one line with the right exit code."""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmin.errors import DataError, IdentityMismatch, UsageError
from dmin_cli.app import app, error_line

REPO = Path(__file__).resolve().parents[1]
DMIN = [sys.executable, "-m", "dmin_cli"]
COMMANDS = [
    "collect", "compact", "compress", "demo", "forget", "index", "info", "merge", "precondition", "query", "roots",
    "sql", "verify",
]


def test_every_command_has_help_with_examples_and_is_in_the_readme() -> None:
    runner = CliRunner()
    readme = (REPO / "README.md").read_text()
    names = sorted(c.name or "" for c in app.registered_commands)
    assert names == COMMANDS
    for name in COMMANDS:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output, f"`dmin {name} --help` shows no example"
        assert f"dmin {name}" in readme, f"README does not show `dmin {name}`"


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (UsageError("use just one of --exact or --knn"), 2, "Error: use just one of --exact or --knn"),
        (IdentityMismatch("n: 1 (project) ≠ 2 (requested)"), 1, "Error: n: 1"),
        (DataError("x.png: unreadable image"), 1, "Error: x.png: unreadable image"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "Error: no space left for a write"),
        (RuntimeError("boom"), 1, "unexpected RuntimeError: boom (set DMIN_DEBUG=1"),
    ],
)
def test_error_mapping(exc: BaseException, code: int, text: str) -> None:
    line, got = error_line(exc)
    assert got == code and text in line and "\n" not in line


def test_errors_are_one_line_unless_debugging(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "dmin_cli", "sql", str(tmp_path), "SELECT 1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a dmin project" in r.stderr
    debug = subprocess.run(cmd, capture_output=True, text=True, env={"DMIN_DEBUG": "1", "PATH": ""})
    assert "Traceback" in debug.stderr
    usage = subprocess.run([sys.executable, "-m", "dmin_cli", "query"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_version_and_completion_answer_without_loading_torch() -> None:
    """Shell completion runs `dmin` on every Tab: the app must not import torch until a command runs."""
    probe = "import sys, dmin_cli.app; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
    version = subprocess.run([*DMIN, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout == "dmin 0.2.0\n" and version.stderr == ""
    env = {**os.environ, "_DMIN_COMPLETE": "complete_bash", "COMP_WORDS": "dmin query proj --pe", "COMP_CWORD": "3"}
    assert subprocess.run(DMIN, capture_output=True, text=True, env=env).stdout.split() == ["--per-t"]
    env.update(COMP_WORDS="dmin co", COMP_CWORD="1")
    completed = subprocess.run(DMIN, capture_output=True, text=True, env=env).stdout.split()
    assert completed == ["collect", "compress", "compact"]
    # typer detects the shell from the process tree: run it under bash, as a user would, whatever runs the tests
    shell = subprocess.run(["bash", "-c", shlex.join([*DMIN, "--show-completion"]) + "; true"], capture_output=True)
    assert "_DMIN_COMPLETE=complete_bash" in shell.stdout.decode(), shell.stderr
