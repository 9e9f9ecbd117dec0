"""Shared fixtures: small projects with synthetic vectors (the real collection path is tested in test_collect)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmin.store import Identity, Project
from dmin.store.tables import SampleBatch
from dmin.vs import complete


def make_identity(**kw: object) -> Identity:
    base: dict[str, object] = dict(
        model_family="ddpm",
        model_fingerprint="m0",
        layout_hash="l0",
        n=5000,
        D=8192,
        loss_type="epsilon",
        timesteps=(10.0, 500.0),
        latent_shape=(1, 8, 8),
        collect_vs=("256",),
    )
    base.update(kw)
    return Identity(**base)  # type: ignore[arg-type]


def add_samples(project: Project, start: int, count: int, seed: int = 0, v: str = "256") -> None:
    rng = np.random.default_rng(seed + start)
    K = project.identity.K
    batch = SampleBatch(
        [f"id{i:05d}" for i in range(start, start + count)],
        [f"img{i}.png" for i in range(start, start + count)],
        [f"caption {i}" for i in range(start, start + count)],
        [i % 10 for i in range(start, start + count)],
        {"subset": ["base"] * count},
        project.identity.timesteps,
        {v: rng.standard_normal((count, K, int(v))).astype(np.float32)},
        np.ones((count, K)),
        np.full((count, K), 0.5),
    )
    project.commit_samples(batch, complete=complete)


@pytest.fixture
def small_project(tmp_path: Path) -> Project:
    p = Project.create(tmp_path / "proj", make_identity())
    add_samples(p, 0, 12)
    add_samples(p, 12, 8)
    return p
