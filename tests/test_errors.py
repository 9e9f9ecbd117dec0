"""Bad inputs across every command: each gives one stderr line that names the problem and the fix, exit 1 (2 for
usage), no "unexpected" (kept for real bugs), nothing on stdout, and every file under the working folder — the
project, its model and data — unchanged.

The commands run in-process through the console entry point (`dmin_cli.app.main`), stdout and stderr captured at
the file-descriptor level; tests/test_cli.py and tests/test_quiet.py run the real executable.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import xxhash

from dmin.collect import collect
from dmin.gradients import prepare
from dmin_cli.app import main
from dmin_cli.quiet import PIPE_QUIET
from tests import tiny


class Case(NamedTuple):
    args: str  # run from the working folder: proj (a DDPM project), model, data, afile, emptydir, q-*.jsonl, …
    code: int
    problem: str  # regexes the one line must match
    fix: str


CASES = {
    # -- the app --------------------------------------------------------------------------------------------------
    "unknown command": Case("nosuch proj", 2, r"No such command 'nosuch'", r"see `dmin --help`"),
    "misspelt command": Case("colect proj", 2, r"No such command 'colect'", r"Did you mean 'collect'"),
    # -- collect ------------------------------------------------------------------------------------------------
    "collect without --model": Case("collect proj --data data", 2, r"Missing option '--model'", r"dmin collect --help"),
    "collect into a file": Case("collect afile --model model --data data", 1, r"afile is a file", r"new directory"),
    "collect missing data": Case(
        "collect new --model model --data nope", 1, r"--data nope: no such file or directory", r"image folder or a"
    ),
    "collect data without metadata": Case(
        "collect new --model model --data emptydir", 1, r"no metadata\.jsonl or metadata\.csv", r"file_name plus"
    ),
    "collect non-integer label": Case(
        "collect new --model model --data badlabel", 1, r"label 'abc' is not an integer", r"class indices"
    ),
    "collect other timesteps": Case(
        "collect proj --model model --data data --timesteps 3 --v 256 --v full",
        1,
        r"different setup .*timesteps: \[25\.0, 75\.0\] \(project\)",
        r"new project directory",
    ),
    "collect --v abc": Case("collect new --model model --data data --v abc", 2, r"--v 'abc'", r"power of two"),
    "collect --batch-size 0": Case(
        "collect new --model model --data data --batch-size 0", 2, r"--batch-size", r"at least 1"
    ),
    "collect --model not a pipeline": Case(
        "collect new --model data --data data", 1, r"--model data: no model_index\.json", r"diffusers pipeline dir"
    ),
    "collect --shard 5/4": Case("collect new --model model --data data --shard 5/4", 2, r"--shard 5/4", r"0 ≤ i < N"),
    "collect timestep past the schedule": Case(
        "collect new --model model --data data --timestep-list 500", 2, r"\[500\.0\]", r"lie in \[0, 100\)"
    ),
    "collect a pipeline without its vae/": Case(
        "collect new --model novae --data data", 1, r"names component 'vae' \(AutoencoderKL\)", r"copy the pipeline"
    ),
    "collect a pipeline without its UNet weights": Case(
        "collect new --model nounet --data data", 1, r"component 'unet' has no weights", r"restore the file"
    ),
    "collect an SDXL LoRA on SD 1.5": Case(
        "collect new --model sd15 --lora sdxl-lora --data data",
        1,
        r"--lora sdxl-lora: made for another model: .* in the LoRA but",
        r"a width of 32 where this model has 16\); use the LoRA with the model it was trained on",
    ),
    "collect --resolution 13": Case(
        "collect new --model model --data data --resolution 13",
        2,
        r"--resolution 13: must be a multiple of 2",
        r"e\.g\. 1[24]",
    ),
    "collect --timesteps and --timestep-list": Case(
        "collect new --model model --data data --timesteps 3 --timestep-list 5", 2, r"not both", r"--timesteps K or"
    ),
    "collect an empty metadata.jsonl": Case(
        "collect new --model model --data emptymeta", 1, r"--data emptymeta: its metadata lists no images",
        r"one row per image",
    ),
    "collect --v 300": Case(
        "collect new --model model --data data --v 300", 2, r"--v 300: v must be a power", r"16, 32"
    ),
    "collect --device gpu": Case(
        "collect new --model model --data data --device gpu", 2, r"--device 'gpu'", r"choose auto, cpu, cuda"
    ),
    # -- compress -----------------------------------------------------------------------------------------------
    "compress --v full": Case("compress proj --v full", 2, r"--v full cannot be derived", r"power of two such as"),
    "compress --v 1000": Case("compress proj --v 1000", 2, r"--v 1000: v must be a power of two", r"16, 32, …"),
    "compress --v past D": Case("compress proj --v 131072", 2, r"exceeds D=65536", r"use v ≤ 65536"),
    "compress a file": Case("compress afile --v 64", 1, r"afile is a file", r"pass the project's directory"),
    # -- index --------------------------------------------------------------------------------------------------
    "index --v full": Case("index proj --v full", 2, r"v=full is for exact scoring", r"index a compressed v"),
    "index --v 1000": Case("index proj --v 1000", 2, r"--v 1000: v must be a power of two", r"16, 32, …"),
    "index --v not stored": Case("index proj --v 512", 2, r"v=512 is not stored", r"dmin compress \S+ --v 512"),
    "index no project": Case("index nope --v 256", 1, r"nope: no such directory", r"dmin collect nope"),
    "index --m 1": Case("index proj --v 256 --m 1", 2, r"--m must be", r"at least 2"),
    # -- precondition -------------------------------------------------------------------------------------------
    "precondition --v full": Case("precondition proj --v full", 2, r"v=full's Gram", r"precondition a compressed v"),
    "precondition --lambda 0": Case("precondition proj --v 256 --lambda 0", 2, r"--lambda 0", r"a positive number"),
    "precondition no project": Case("precondition nope --v 256", 1, r"nope: no such directory", r"dmin collect nope"),
    "query --precondition without one": Case(
        "query proj --image data/0001.png --label 1 --v 256 --precondition", 2, r"no preconditioner for v=256",
        r"dmin precondition \S+ --v 256"
    ),
    # -- query --------------------------------------------------------------------------------------------------
    "query --label 42": Case("query proj --image data/0001.png --label 42", 1, r"label 42 is outside", r"classes 0–9"),
    "query --label -1": Case("query proj --image data/0001.png --label -1", 2, r"got -1", r"a class index"),
    "query without --label on a class-conditional model": Case(
        "query proj --image data/0001.png", 1, r"class-conditional and needs a label", r"pass --label N"
    ),
    "queries line not an object": Case(
        "query proj --queries q-list.jsonl", 1, r"q-list\.jsonl:1: each line must be a JSON object", r'e\.g\. \{"image"'
    ),
    "queries file missing": Case("query proj --queries nope.jsonl", 1, r"nope\.jsonl: no such file", r"JSONL file"),
    "queries image not a string": Case(
        "query proj --queries q-int.jsonl", 1, r"q-int\.jsonl:1: image must be", r"a file path"
    ),
    "queries unknown key": Case(
        "query proj --queries q-typo.jsonl", 1, r"q-typo\.jsonl:1: unknown key 'lable'", r"the keys are image, prompt"
    ),
    "queries empty": Case("query proj --queries q-empty.jsonl", 1, r"holds no queries", r"one JSON object per line"),
    "queries malformed": Case("query proj --queries q-broken.jsonl", 1, r"q-broken\.jsonl:2: malformed", r"fix the"),
    "query --queries with --label": Case(
        "query proj --queries q-typo.jsonl --label 1", 2, r"use --queries alone", r"each of its lines"
    ),
    "query --image a directory": Case("query proj --image data --label 1", 1, r"is a directory", r"the image file"),
    "query --image missing": Case("query proj --image nope.png --label 1", 1, r"no such file", r"or --seed S"),
    "query --image not an image": Case(
        "query proj --image afile --label 1", 1, r"not a readable image", r"PNG or JPEG"
    ),
    "query neither --image nor --seed": Case("query proj --label 3", 2, r"needs an image", r"--seed"),
    "query --image and --seed": Case(
        "query proj --image data/0001.png --seed 3 --label 1", 2, r"not both", r"the seed generates"
    ),
    "query --exact --knn": Case("query proj --image data/0001.png --exact --knn", 2, r"just one of", r"--exact or"),
    "query --k 0": Case("query proj --image data/0001.png --label 1 --k 0", 2, r"'--k'", r"greater than or equal"),
    "query --sheet a directory": Case(
        "query proj --image data/0001.png --label 1 --sheet data", 2, r"--sheet data: is a directory", r"a file name"
    ),
    "query --v 1000": Case(
        "query proj --image data/0001.png --label 1 --v 1000", 2, r"--v 1000: v must be a power", r"16, 32"
    ),
    "query --v not stored": Case(
        "query proj --image data/0001.png --label 1 --v 512", 2, r"v=512 is not stored", r"from v=full with `dmin"
    ),
    "query --v full --knn": Case(
        "query proj --image data/0001.png --label 1 --v full --knn", 2, r"v=full is scored exactly", r"drop --knn"
    ),
    "query --knn without an index": Case(
        "query proj --image data/0001.png --label 1 --knn", 2, r"no index for v=256", r"dmin index \S+ --v 256"
    ),
    # -- sql ----------------------------------------------------------------------------------------------------
    "sql on a file": Case("sql afile 'SELECT 1'", 1, r"afile is a file", r"pass the project's directory"),
    "sql on a plain folder": Case("sql emptydir 'SELECT 1'", 1, r"not a dmin project", r"dmin collect emptydir"),
    "sql --json --csv": Case("sql proj 'SELECT 1' --json --csv", 2, r"just one of", r"--json or --csv"),
    "sql that writes": Case(
        "sql proj \"COPY (SELECT 42) TO 'proj/dmin.json'\"", 2, r"COPY is refused before it runs", r"--parquet FILE"
    ),
    "sql WITH before an INSERT": Case(
        "sql proj 'WITH t AS (SELECT 1) INSERT INTO samples SELECT * FROM t'",
        2,
        r"INSERT \(after WITH\) is refused",
        r"export results with",
    ),
    "sql --parquet inside the project": Case(
        "sql proj 'SELECT 1' --parquet proj/x.parquet", 2, r"inside the project", r"choose a path outside it"
    ),
    # -- forget, compact, roots ---------------------------------------------------------------------------------
    "forget without a selector": Case("forget proj", 2, r"select what to forget", r"--source GLOB"),
    "forget in a pipe without --yes": Case(
        "forget proj --source '*' --json", 2, r"forget asks before it commits", r"pass --yes"
    ),
    "forget --where on a missing column": Case(
        "forget proj --where 'nosuch = 1' --yes", 2, r'column "nosuch" not found', r"condition over the samples"
    ),
    "compact a negative grace": Case("compact proj --orphan-grace -1", 2, r"--orphan-grace -1", r"seconds ≥ 0"),
    "compact no project": Case("compact nope", 1, r"nope: no such directory", r"dmin collect nope"),
    "merge no source": Case("merge out", 2, r"Missing argument 'SRC…'", r"--help"),
    "merge a missing source": Case("merge out nope", 1, r"nope: no such directory", r"dmin collect nope"),
    "merge a folder that is no project": Case("merge out emptydir", 1, r"emptydir: not a dmin project", r"collect"),
    "merge into a source": Case("merge proj proj", 2, r"proj: is also a source", r"merge other projects"),
    "roots --from without --to": Case("roots proj --from /x", 2, r"needs both", r"--to NEW"),
    "roots --from an unknown root": Case(
        "roots proj --from /nowhere --to data", 2, r"not a data root of this project", r"see `dmin roots`"
    ),
    # -- verify, info -------------------------------------------------------------------------------------------
    "verify no project": Case("verify nope", 1, r"nope: no such directory", r"dmin collect nope"),
    "verify a file": Case("verify afile --deep --json", 1, r"afile is a file", r"pass the project's directory"),
    "info no project": Case("info nope --json", 1, r"nope: no such directory", r"dmin collect nope"),
    "info a file": Case("info afile", 1, r"afile is a file", r"pass the project's directory"),
    # -- demo (nothing may be written: an empty --limit 0 data set would be reused by later runs) ---------------
    "demo --out a file": Case("demo --out afile", 1, r"--out afile is a file", r"choose a directory"),
    "demo --limit 0": Case("demo --limit 0", 2, r"--limit must be at least 1", r"leave it out"),
    "demo --k 0": Case("demo --k 0", 2, r"--k must be", r"at least 1"),
    "demo --timesteps 0": Case("demo --timesteps 0", 2, r"--timesteps must be", r"at least 1"),
}


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under root, with each file's xxh3: two equal trees hold the same bytes."""
    return {
        p.relative_to(root).as_posix(): xxhash.xxh3_64_hexdigest(p.read_bytes()) if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    tiny.ddpm(root / "model")
    tiny.digits_folder(root / "data", count=4)
    setup = prepare(root / "model", timesteps=2, vs=["256", "full"])
    collect(root / "proj", setup, root / "data")
    (root / "afile").write_text("not a project, not an image\n")
    (root / "emptydir").mkdir()
    (root / "emptymeta").mkdir()
    (root / "emptymeta" / "metadata.jsonl").write_text("")
    tiny.sd15(root / "sd15")
    for name, drop in (("novae", "vae"), ("nounet", "unet/diffusion_pytorch_model.safetensors")):
        shutil.copytree(root / "sd15", root / name)
        shutil.rmtree(root / name / drop) if (root / name / drop).is_dir() else (root / name / drop).unlink()
    tiny.lora(tiny.sdxl(root / "sdxl"), root / "sdxl-lora")
    (root / "badlabel").mkdir()
    (root / "badlabel" / "metadata.jsonl").write_text('{"file_name": "x.png", "label": "abc"}\n')
    (root / "q-list.jsonl").write_text("[1, 2]\n")
    (root / "q-int.jsonl").write_text('{"image": 5, "label": 1}\n')
    (root / "q-typo.jsonl").write_text('{"image": "data/0001.png", "lable": 1}\n')
    (root / "q-empty.jsonl").write_text("\n")
    (root / "q-broken.jsonl").write_text('{"image": "data/0001.png", "label": 1}\n{"image": \n')
    return root


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> tuple:
    """(exit code, stdout, stderr) of `dmin ARGS`; environment changes main makes are undone afterwards."""
    for name in (*PIPE_QUIET, "PYTHONWARNINGS", "DMIN_DEBUG"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # records the original, restored after the test
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as stop:
        main(args)
    out, err = capfd.readouterr()
    return stop.value.code, out, err


def test_the_table_is_large_and_covers_every_command() -> None:
    from dmin_cli.app import app

    assert len(CASES) >= 25
    firsts = {(c.values[0] if not isinstance(c, Case) else c).args.split()[0] for c in CASES.values()}
    assert {cmd.name for cmd in app.registered_commands} <= firsts


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_gives_one_line_and_changes_nothing(
    case: Case, work: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(work)
    before = tree(work)
    code, out, err = run_main(shlex.split(case.args), monkeypatch, capfd)
    line = err.rstrip("\n")
    assert "\n" not in line and err.endswith("\n"), f"not one line: {err!r}"
    assert line.startswith("Error: ") and "unexpected" not in line, line
    assert re.search(case.problem, line), f"the problem is not named: {line}"
    assert re.search(case.fix, line), f"the fix is not named: {line}"
    assert code == case.code, line
    assert out == ""
    assert tree(work) == before, "the command changed files"


@pytest.fixture(scope="module")
def sd3_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sd3")
    tiny.sd3(root / "model")
    config = root / "model" / "vae" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "shift_factor": None}))  # as some VAEs ship
    data = tiny.digits_folder(root / "data", count=2)
    collect(root / "proj", prepare(root / "model", timesteps=1, vs=["64"]), data)
    return root


@pytest.mark.slow
def test_sd3_generation_with_a_vae_without_shift_factor(
    sd3_work: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A VAE without shift_factor means a shift of 0: generating the query image must work (today a TypeError)."""
    monkeypatch.chdir(sd3_work)
    code, out, err = run_main(["query", "proj", "--prompt", "a digit", "--seed", "5", "--json"], monkeypatch, capfd)
    assert code == 0 and "unexpected" not in err, err
    assert json.loads(out)["results"]
