"""A throwaway PostgreSQL server for tests (``pg.server``) and its pytest fixtures (``pg.fixtures``)."""
