"""pytest fixtures for PostgreSQL, registered for the whole suite by tests/conftest.py (``pytest_plugins``).

``pg_server`` is one server per test session (started on first use, ~2 s); ``postgres_url`` is a fresh
database on it for each test, so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from pg.server import PostgresServer, PostgresUnavailable

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"the test PostgreSQL server did not start: {exc}", pytrace=False)
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(pg_server: PostgresServer) -> str:
    """The URL of a new empty database (``postgresql+psycopg://...``)."""
    return pg_server.create_database(f"t{next(_numbers)}")
