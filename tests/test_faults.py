"""A fast subset of scripts/faults.py (the full run is `python scripts/faults.py`, figures in the README)."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("faults", Path(__file__).parents[1] / "scripts" / "faults.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


faults = _load()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield faults.Env(tmp_path_factory.mktemp("faults"))


def passed_all(result: dict[str, Any]) -> bool:
    return result["trials"] > 0 and result["passed"] == result["trials"]


def test_kill_during_collect_resumes_to_the_same_project(env: Any) -> None:
    result = faults.kill_collect(env, 2, random.Random(1))
    assert passed_all(result), result


def test_concurrent_shards_lose_and_duplicate_nothing(env: Any) -> None:
    result = faults.shards(env, 1, rounds=1)  # the full harness runs two rounds; test_collect covers reruns
    assert passed_all(result), result


def test_corruption_is_caught_and_named(env: Any) -> None:
    cases = {("grads", "flip"), ("index binary", "truncate")}  # damaged vectors; a binary hnswlib must never load
    result = faults.corruption(env, random.Random(2), only=cases)
    assert result["trials"] == len(cases) and passed_all(result), result


def test_kill_during_forget_and_compact_leaves_a_valid_state(env: Any) -> None:
    for kind in (faults.kill_forget, faults.kill_compact):
        result = kind(env, 1, random.Random(3))
        assert passed_all(result), result
