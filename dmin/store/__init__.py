"""The gradient database (docs/format.md): Parquet tables, a manifest that commits them, atomic writes, readers."""

from dmin.store.identity import Identity
from dmin.store.project import Project

__all__ = ["Identity", "Project"]
