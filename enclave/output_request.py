"""Output records: the signed ``OutputRecordBody`` a node sends with ``RecordOutput``.

Signing mirrors the release request (``enclave.release_request``) under its own domain string, so a
signature over one kind of request never verifies as the other:

    body      = OutputRecordBody(...).SerializeToString(deterministic=True)
    signature = Ed25519(node signing key, b"sovereign/v1 output" || body)

Pure: no I/O and no clock (the caller passes the timestamp and the random request id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from enclave.errors import NodeCode, NodeError
from enclave.release_request import REQUEST_ID_LEN, Signer
from enclave.workload.output_report import OutputReport
from proto.contract import BodyRejected, encode_output_body, output_transcript
from proto.sovereign.v1 import key_release_pb2


@dataclass(frozen=True)
class SignedOutput:
    """The exact bytes sent in ``RecordOutputRequest``."""

    body: bytes
    signature: bytes


def sign_output(
    signer: Signer, node_id: str, report: OutputReport, *, request_id: bytes, timestamp: datetime
) -> SignedOutput:
    if len(request_id) != REQUEST_ID_LEN:
        raise NodeError(f"request id must be {REQUEST_ID_LEN} bytes", code=NodeCode.CONFIG_INVALID)
    body = key_release_pb2.OutputRecordBody(
        node_id=node_id,
        key_name=report.key_name,
        key_version=report.key_version,
        request_id=request_id,
        header_sha256=bytes.fromhex(report.header_sha256),
        output_sha256=bytes.fromhex(report.sha256),
        output_size=report.size,
        sealed_sha256=bytes.fromhex(report.sealed_sha256),
        job_name=report.job,
    )
    if report.step is not None:
        body.step = report.step
    body.timestamp.FromDatetime(timestamp.astimezone(UTC))
    try:
        data = encode_output_body(body)
    except BodyRejected as err:
        raise NodeError(err.message, code=NodeCode.CONFIG_INVALID) from None
    return SignedOutput(data, signer.sign(output_transcript(data)))
