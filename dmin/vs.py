"""Every rule about v in one place: how a v is spelled, which stored v a command uses, which v derives which, and
how a commit's vectors are completed to every stored v.

A v is 'full' (the uncompressed normalized gradient, only ever written by `collect --v full`) or a power of two
16 ≤ v ≤ D. A v that is not stored can be derived when a stored v is a multiple of it (by folding, exact) or from
v=full (by compressing with the project's compressor); each error says which of these applies, so a hint never
suggests a command that would fail. Commits write every stored v, derived ones included, by the same rule
`dmin compress` follows (`complete`, handed to the store by its callers: the store never imports the compressor).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from dmin.errors import CompressionError, ProjectError, UsageError
from dmin.store import Project
from dmin.store.identity import Identity

DEFAULT_VS = ("4096", "65536")


def parse_v(text: str | int) -> str:
    """'full' or a positive integer, as dmin.json spells it; UsageError for anything else."""
    s = str(text).strip().lower()
    if s == "full":
        return s
    if not s.isdigit() or int(s) == 0:
        raise UsageError(f"--v {text!r}: expected a power of two such as 4096, or 'full'")
    return str(int(s))


def parse_vs(vs: Sequence[str | int]) -> tuple[str, ...]:
    """The v's `collect` stores (DEFAULT_VS when none is given), each spelled once."""
    return tuple(dict.fromkeys(parse_v(v) for v in (vs or DEFAULT_VS)))


def derivable_v(project: Project, text: str | int) -> int:
    """The v `dmin compress` is asked for, checked: a power of two within the project's range, never 'full'."""
    v = parse_v(text)
    if v == "full":
        raise UsageError(
            "--v full cannot be derived: it is the uncompressed gradient, which only `dmin collect --v full` "
            "writes (into a new project); ask for a power of two such as 1024"
        )
    ident = project.identity
    try:
        from dmin.compressor import Compressor  # torch: only a v that is not stored gets here

        return Compressor(ident.n, ident.compress_seed).check_v(int(v))
    except CompressionError as exc:
        raise UsageError(f"--v {v}: {exc}") from exc


def resolve_v(project: Project, v: str | int | None) -> str:
    """The stored v to use: `v` when it is stored, else the largest compressed v stored (or 'full')."""
    vs = project.identity.vs
    if v is None:
        numeric = sorted((int(x) for x in vs if x != "full"), reverse=True)
        return str(numeric[0]) if numeric else "full"
    s = parse_v(v)
    if s in vs:
        return s
    stored = ", ".join(vs)
    if s == "full":
        raise UsageError(
            f"v=full is not stored (stored: {stored}); uncompressed gradients exist only in a project collected "
            f"with `--v full`: use one of the stored v's"
        )
    new = derivable_v(project, s)
    src = source_for(project, new)  # UsageError when no stored v can give it
    raise UsageError(
        f"v={s} is not stored (stored: {stored}); derive it from v={src} with `dmin compress {project.root} --v {s}`"
    )


def source_v(have: Iterable[str], v: int) -> str | None:
    """Which v of `have` derives `v`: the smallest larger multiple, else 'full'; None when neither is there."""
    have = list(have)
    multiples = sorted(int(s) for s in have if s != "full" and int(s) > v and int(s) % v == 0)
    if multiples:
        return str(multiples[0])
    return "full" if "full" in have else None


def source_for(project: Project, v: int) -> str:
    """The stored v to derive `v` from (`source_v` over the project's v's), or a UsageError that says what would."""
    ident = project.identity
    from dmin.compressor import Compressor  # torch: loaded by the commands that derive

    Compressor(ident.n, ident.compress_seed).check_v(v)
    src = source_v(ident.vs, v)
    if src is None:
        stored = ", ".join(ident.vs) or "none"
        largest = max((int(s) for s in ident.vs if s != "full"), default=16)
        raise UsageError(
            f"cannot derive v={v}: no stored v is a multiple of it (stored: {stored}); ask for a power of two up "
            f"to {largest}, or collect a larger --v (or --v full) into a new project"
        )
    return src


def derive(vecs: np.ndarray, src: str, v: int, identity: Identity) -> np.ndarray:
    """(…, dim) float vectors at `src` → (…, v) float32 vectors at v."""
    import torch  # here, not at the top: `dmin --help` must not load torch

    from dmin.compressor import Compressor, fold

    own = np.array(vecs, dtype=np.float32, order="C")  # a writable copy: stored vectors are read-only mapped pages
    if src != "full":
        return fold(torch.from_numpy(own), v).numpy()
    comp = Compressor(identity.n, identity.compress_seed)
    out = comp.compress(torch.from_numpy(own).reshape(-1, vecs.shape[-1]), v)  # every row at once, over threads
    return out.reshape(*vecs.shape[:-1], v).numpy()


def complete(vecs: dict[str, np.ndarray], want: Iterable[str], identity: Identity) -> dict[str, np.ndarray]:
    """`vecs` (v → (…, dim)) plus every v of `want` it lacks, larger v's first so each smaller one is derived from
    the same source `dmin compress` would pick."""
    out = dict(vecs)
    for v in sorted((w for w in want if w not in out and w != "full"), key=int, reverse=True):
        src = source_v(out, int(v))
        if src is None:
            raise ProjectError(f"v={v} is stored but cannot be derived from the v's at hand ({', '.join(out)})")
        out[v] = derive(out[src], src, int(v), identity)
    return out
