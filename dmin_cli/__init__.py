"""The `dmin` command line: parses, calls the dmin library, renders (rich on a terminal, JSON for scripts)."""
