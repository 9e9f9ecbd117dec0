"""Typed errors. Every message names the problem and, where there is one, the fix: the CLI prints it as one line."""

from __future__ import annotations


class DminError(Exception):
    """Base class of every error dmin raises on purpose."""


class DminWarning(UserWarning):
    """Something a user should know that does not stop the work (the CLI shows these, and no other library's)."""


class CompressionError(DminError, ValueError):
    """A compressor argument breaks a rule (v not a power of two, chunk past n, wrong shape or dtype)."""


class ProjectError(DminError):
    """A project directory is missing, unreadable, or not a dmin project."""


class IdentityMismatch(DminError):
    """The requested identity (model, adapter, timesteps, seeds, …) differs from the project's."""


class SchemaVersionError(DminError):
    """The project was written by a newer dmin schema than this one reads."""


class IntegrityError(DminError):
    """A committed file no longer matches its manifest entry (size, checksum, schema)."""


class ModelLoadError(DminError):
    """A model or adapter directory cannot be loaded safely (missing, unsupported, pickle-only, remote code)."""


class DataError(DminError):
    """A data set cannot be read (missing metadata, file outside its folder, missing condition column)."""


class IndexStale(DminError):
    """The index misses samples committed after it was built."""


class UsageError(DminError):
    """Arguments that contradict each other; the CLI exits 2."""
