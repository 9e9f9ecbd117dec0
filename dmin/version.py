"""The release number, in a module of its own: the store records it in files without importing the package root."""

__version__ = "0.2.0"
