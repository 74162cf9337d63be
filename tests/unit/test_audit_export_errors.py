"""A failure while the Audit Export stream runs ends the call with the failure's code (a lost database is
STORAGE_ERROR), never gRPC's UNKNOWN: the replicas soak saw UNKNOWN when PostgreSQL restarted mid-export."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NoReturn

import grpc
import pytest

from kms.errors import StorageError
from kms.server.audit_servicer import AuditServicer
from proto.sovereign.v1 import audit_pb2


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.status: grpc.StatusCode | None = None
        self.message = ""
        self.trailer: Any = None

    def set_trailing_metadata(self, trailer: Any) -> None:
        self.trailer = trailer

    def abort(self, status: grpc.StatusCode, message: str) -> NoReturn:
        self.status, self.message = status, message
        raise Aborted


class Reader:
    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def export(self, start: int, end: int) -> Iterator[Any]:
        raise self.failure
        yield  # a generator, as the real reader is


def _export(failure: Exception) -> Context:
    context = Context()
    servicer = AuditServicer(Reader(failure), None)  # type: ignore[arg-type]
    with pytest.raises(Aborted):
        list(servicer.Export(audit_pb2.ExportRequest(), context))  # type: ignore[arg-type]
    return context


def test_a_database_lost_mid_export_is_storage_error() -> None:
    context = _export(StorageError("database unavailable: server closed the connection"))
    assert context.status is grpc.StatusCode.UNAVAILABLE
    assert context.message.startswith("STORAGE_ERROR: database unavailable")
    assert context.trailer


def test_an_unexpected_failure_mid_export_is_internal_and_says_nothing_of_it() -> None:
    context = _export(RuntimeError("secret detail"))
    assert context.status is grpc.StatusCode.INTERNAL
    assert context.message.startswith("INTERNAL_ERROR") and "secret detail" not in context.message
