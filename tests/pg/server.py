"""The throwaway PostgreSQL server the tests start: it lives in ``sovereign.devtools.postgres`` (the soak
starts it too); this name stays for the tests' imports."""

from sovereign.devtools.postgres import PostgresServer, PostgresUnavailable, ensure_bin_dir, find_bin_dir

__all__ = ["PostgresServer", "PostgresUnavailable", "ensure_bin_dir", "find_bin_dir"]
