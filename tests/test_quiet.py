"""Quiet pipes: with stdout a pipe (or --json) a successful command prints its output and nothing else — stderr
stays empty, whatever diffusers, transformers and tqdm would draw. On a terminal, a long step shows dmin's own bar.

These run the real executable (`python -m dmin_cli`), so libraries are imported after the CLI has set them quiet,
exactly as for a user.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tiny

DMIN = [sys.executable, "-m", "dmin_cli"]


def dmin(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DMIN_DEBUG"}
    return subprocess.run([*DMIN, *args], cwd=cwd, capture_output=True, text=True, env=env)


def quiet_ok(cwd: Path, *args: str) -> str:
    """stdout of a command that must succeed with nothing on stderr."""
    r = dmin(cwd, *args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"dmin {' '.join(args)} wrote to stderr:\n{r.stderr[:2000]}"
    assert r.stdout.strip(), "no output"
    return r.stdout


def on_a_terminal(cwd: Path, *args: str) -> str:
    """Everything a command draws when stdout and stderr are a terminal (a pseudo-terminal here)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([*DMIN, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))  # drop colours
    assert proc.wait() == 0, screen
    return screen


@pytest.fixture(scope="module")
def ddpm_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quiet")
    tiny.ddpm(root / "model")
    tiny.digits_folder(root / "data", count=6)
    return root


@pytest.mark.slow
def test_every_command_in_a_pipe_prints_only_its_output(ddpm_work: Path) -> None:
    w = ddpm_work
    collect = ("collect", "proj", "--model", "model", "--data", "data", "--timesteps", "2", "--v", "256")
    assert json.loads(quiet_ok(w, *collect, "--json"))["done"] == 6
    assert "collected 0, skipped 6" in quiet_ok(w, *collect)
    assert "added 6" in quiet_ok(w, "index", "proj", "--v", "256")
    assert "stored v=64 from v=256" in quiet_ok(w, "compress", "proj", "--v", "64")
    generated = json.loads(quiet_ok(w, "query", "proj", "--label", "3", "--seed", "1", "--k", "3", "--json"))
    assert generated["method"] == "knn" and len(generated["results"]) == 3
    table = quiet_ok(w, "query", "proj", "--image", "data/0003.png", "--label", "3", "--k", "2", "--per-t", "--exact")
    assert "t=25" in table and "t=75" in table
    first = next(line for line in table.splitlines() if line.startswith("│ 1 "))
    score, *per_t = (float(cell) for cell in first.split("│")[2:5])
    assert abs(sum(per_t) - score) < 2e-4  # the per-timestep terms add up to the score
    assert "healthy" in quiet_ok(w, "verify", "proj", "--deep")
    assert json.loads(quiet_ok(w, "info", "proj", "--json"))["queries"] == 2
    assert json.loads(quiet_ok(w, "sql", "proj", "SELECT count(*) AS n FROM samples", "--json")) == [{"n": 6}]


@pytest.mark.slow
def test_on_a_terminal_long_steps_show_a_dmin_bar(ddpm_work: Path) -> None:
    w = ddpm_work
    if not (w / "proj").exists():  # run alone
        quiet_ok(w, "collect", "proj", "--model", "model", "--data", "data", "--timesteps", "2", "--v", "256")
    screen = on_a_terminal(w, "compress", "proj", "--v", "32")
    # 6 samples (and 2 queries, after the pipe test) × K = 2 rows
    assert re.search(r"compress v=\d+ → 32 .*━.* (12/12|16/16)", screen), screen
    screen = on_a_terminal(w, "verify", "proj", "--deep")
    assert re.search(r"verify --deep .*━", screen) and "healthy" in screen, screen
    screen = on_a_terminal(w, "query", "proj", "--label", "2", "--seed", "3", "--k", "2", "--exact")
    assert re.search(r"query .*━.* 1/1", screen) and "rank" in screen, screen


@pytest.fixture(scope="module")
def text_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quiet-text")
    tiny.sd15(root / "sd")
    tiny.sd3(root / "sd3")
    tiny.digits_folder(root / "data", count=2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_text_pipelines_load_quietly(text_work: Path, family: str) -> None:
    """transformers' 'Loading weights' bars and advice reach stderr unless the CLI sets them quiet."""
    w, proj = text_work, f"proj-{family}"
    quiet_ok(w, "collect", proj, "--model", family, "--data", "data", "--timesteps", "1", "--v", "full", "--json")
    out = quiet_ok(w, "query", proj, "--image", "data/0001.png", "--prompt", "a digit one", "--k", "1", "--json")
    assert json.loads(out)["results"][0]["source"] == "0001.png"  # uncompressed: a sample is its own best match


@pytest.mark.slow
def test_generating_with_a_diffusers_pipeline_is_quiet(tmp_path: Path) -> None:
    tiny.dit(tmp_path / "dit")
    tiny.digits_folder(tmp_path / "data", count=2)
    quiet_ok(tmp_path, "collect", "proj", "--model", "dit", "--data", "data", "--timesteps", "1", "--v", "64")
    quiet_ok(tmp_path, "query", "proj", "--label", "1", "--seed", "0", "--k", "1", "--json")
