"""Which committed rows are forgotten: tombstones, read as a delete is in MVCC.

A `forget` entry commits a tombstone file of sample_ids. It forgets those samples in every file committed before
it, and in none committed after: so a sample collected again on purpose (`collect --include-forgotten`) is live in
its new files while its old rows stay dead, and any writer that copies rows (compress, compact) must drop dead
ones, as its output is committed after the tombstone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dmin.store.manifest import Entry, FileRef

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class Liveness:
    seq_of: dict[str, int]  # committed path → seq of the entry naming it
    tombstones: list[tuple[int, frozenset[str]]]  # (seq, sample_ids), in commit order
    _memo: dict[int, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: list[Entry], read_ids: Callable[[FileRef], frozenset[str]]) -> Liveness:
        seq_of = {f.path: e.seq for e in entries for f in e.files}
        tombs = [
            (e.seq, frozenset().union(*(read_ids(f) for f in e.files if f.table == "tombstones")))
            for e in entries
            if e.kind == "forget"
        ]
        return cls(seq_of, tombs)

    def dead(self, ref: FileRef) -> frozenset[str]:
        """sample_ids whose rows in this file are forgotten (empty for most files)."""
        seq = self.seq_of.get(ref.path, 0)
        if seq not in self._memo:
            self._memo[seq] = frozenset().union(*(ids for s, ids in self.tombstones if s > seq))
        return self._memo[seq]

    @property
    def forgotten(self) -> frozenset[str]:
        """Every sample_id a tombstone names (the suppression list, once the ones collected again are removed)."""
        return frozenset().union(*(ids for _, ids in self.tombstones))
