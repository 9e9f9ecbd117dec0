"""One module per command; importing this package registers them all on the app."""

from dmin_cli.commands import collect, compress, demo, index, query, sql, verify

__all__ = ["collect", "compress", "demo", "index", "query", "sql", "verify"]
