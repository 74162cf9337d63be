"""Pytest fixtures around the development realm (``sovereign.demo.realm``): a real OpenID Connect provider
on loopback with Keycloak's URL layout. A missing node/npm or a failed start fails the test (no skip)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from sovereign.demo.realm import (
    CLIENT_ID,
    OTHER_REALM,
    REALM,
    Standin,
    StandinError,
    password_of,
    standin,
    start,
)

__all__ = ["CLIENT_ID", "OTHER_REALM", "REALM", "Standin", "StandinError", "password_of", "standin", "start"]


@pytest.fixture(name="keycloak")
def keycloak_fixture() -> Standin:
    """The shared Keycloak stand-in; a missing node/npm or a failed start fails the test (no skip)."""
    try:
        return standin()
    except StandinError as exc:
        pytest.fail(str(exc), pytrace=False)


@contextlib.contextmanager
def running() -> Iterator[Standin]:
    """A private stand-in for one test (when shared state such as request counters must be fresh)."""
    own = start()
    try:
        yield own
    finally:
        own.stop()
