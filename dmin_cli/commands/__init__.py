"""One module per command; importing this package registers them all on the app."""

from dmin_cli.commands import compress, sql, verify

__all__ = ["compress", "sql", "verify"]
