"""One module per command; importing this package registers them all on the app."""

from dmin_cli.commands import collect, compact, compress, demo, forget, index, query, roots, sql, verify

__all__ = ["collect", "compact", "compress", "demo", "forget", "index", "query", "roots", "sql", "verify"]
