"""The README's examples run as written, so they cannot drift from the code.

A fenced block right after an HTML comment starting `<!-- tested:` (invisible on GitHub) is run here: a bash block
command by command through `python -m dmin_cli`, a python block with exec, both in a folder holding what they name —
a tiny Stable Diffusion pipeline as ./my-pipeline, digits with captions as ./train-images, and gen.png.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import dmin
from tests import tiny

README = Path(__file__).resolve().parents[1] / "README.md"
DMIN = [sys.executable, "-m", "dmin_cli"]


def marked_blocks(language: str) -> list[str]:
    text = README.read_text()
    return [
        body for lang, body in re.findall(r"<!-- tested:[^>]*-->\n```(\w+)\n(.*?)\n```", text, re.S) if lang == language
    ]


def commands(block: str) -> list[list[str]]:
    """Each `dmin …` command of a bash block as its arguments (comments dropped, continued lines joined)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[0] == "dmin", f"a tested bash block runs only dmin commands: {line}"
            out.append(argv[1:])
    return out


def test_the_readme_marks_its_examples_and_the_package_exports_what_they_use() -> None:
    assert len(marked_blocks("bash")) == 1 and len(marked_blocks("python")) == 1
    cli = commands(marked_blocks("bash")[0])
    assert {argv[0] for argv in cli} == {
        "collect", "index", "query", "sql", "compress", "verify", "info", "forget", "compact", "roots", "merge",
        "precondition",
    }
    used = set(re.findall(r"\bdmin\.(\w+)", README.read_text()))
    missing = used - set(dmin.__all__) - {"json", "errors"}  # dmin.json is the identity file, dmin.errors a module
    assert not missing, f"the README uses names dmin does not export: {missing}"
    unshown = set(dmin.__all__) - used - {"__version__", "Compressor", "fold"}  # the compressor predates the API
    assert not unshown, f"dmin exports names the README does not show: {unshown}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    tiny.sd15(root / "my-pipeline")
    tiny.digits_folder(root / "train-images", count=6)
    Image.open(root / "train-images" / "0002.png").convert("RGB").save(root / "gen.png")
    return root


@pytest.mark.slow
def test_the_readme_commands_run(work: Path) -> None:
    for argv in commands(marked_blocks("bash")[0]):
        r = subprocess.run([*DMIN, *argv], cwd=work, capture_output=True, text=True)
        assert r.returncode == 0, f"dmin {shlex.join(argv)}: {r.stderr}"
        if "--json" in argv:
            json.loads(r.stdout)
    assert (work / "top10.png").is_file()


@pytest.mark.slow
def test_the_readme_python_example_runs(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(work)
    exec(compile(marked_blocks("python")[0], str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "6 samples collected, 0 failed" in out and "'state': 'fresh'" in out


def test_the_readme_and_docs_stand_alone() -> None:
    """No reference to a design brief outside the repository; every relative link points at a file that exists."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    assert {p.name for p in pages} >= {"README.md", "method.md", "format.md", "cli.md"}
    for page in pages:
        text = page.read_text()
        assert "DESIGN" not in text, f"{page.name} cites the design brief"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+://", target):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
