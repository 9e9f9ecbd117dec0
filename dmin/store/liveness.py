"""Which committed rows are forgotten: tombstones, read as a delete is in MVCC.

A `forget` entry commits a tombstone file of sample_ids. It forgets those samples in every file committed before
it, and in none committed after: so a sample collected again on purpose (`collect --include-forgotten`) is live in
its new files while its old rows stay dead, and any writer that copies rows (compress, compact, merges) must drop
dead ones, as its output is committed after the tombstone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dmin.store.manifest import FileRef
from dmin.store.state import State


@dataclass
class Liveness:
    seq_of: Callable[[str], int]  # committed path → seq after which tombstones apply to it (0 if unknown): the entry
    # naming it, or a later compact that found it free of forgotten rows
    tombstones: list[tuple[int, frozenset[str]]]  # (seq, sample_ids), in commit order
    _memo: dict[int, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, state: State, read_ids: Callable[[FileRef], frozenset[str]]) -> Liveness:
        files = state.files
        tombs = [(live.seq, read_ids(live.ref)) for live in state.live_files("tombstones")]
        return cls(lambda path: max(files[path].seq, files[path].clean) if path in files else 0, tombs)

    def dead(self, ref: FileRef) -> frozenset[str]:
        """sample_ids whose rows in this file are forgotten (empty for files committed after every tombstone)."""
        seq = self.seq_of(ref.path)
        if seq not in self._memo:
            self._memo[seq] = frozenset().union(*(ids for s, ids in self.tombstones if s > seq))
        return self._memo[seq]

    @property
    def forgotten(self) -> frozenset[str]:
        """Every sample_id a tombstone names (the suppression list, once the ones collected again are removed)."""
        return frozenset().union(*(ids for _, ids in self.tombstones))
