"""Recording a model output (``RecordOutput`` on the release port): the ``model.output`` ledger entry.

For one signed request, in order (as for a key release, ``kms.usecases.release``): shape (malformed ->
REQUEST_INVALID, nothing recorded), the node's registered key verifies the signature over
"sovereign/v1 output" || body (unknown node or bad signature: refused, not recorded), the TLS client
certificate names that node and key, the timestamp lies in the skew window. Then one write transaction
reads afresh and decides: the node is ATTESTED (registered, approved, not suspended or revoked) with a
current lease; the request id is unused (the same table ReleaseKey's ids live in); the node holds a
write grant for exactly that key and version in its session. Only then are the request id and the
``model.output`` entry written, and committed before the reply. A refusal of an authenticated request
is a ``model.output`` deny entry (group-committed) with the reason.

"Session": the node identity's lifetime. A renewal keeps the identity and the keys the agent holds in
memory; a re-registration is a new node id with fresh keys. So the write grant may come from any lease
of this node id (the resident agent asks for a fresh one per output anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from kms.audit.draft import Draft, node_actor
from kms.audit.entry import Decision, Kind, Reason
from kms.clock import Clock
from kms.domain.registry import NodeState
from kms.envelope.names import KEY_NAME_RULE, is_valid_key_name
from kms.errors import Code, KmsError
from kms.sql import Connection
from kms.sql.audit_append import AuditLedger, append_entries
from kms.sql.nodes import SqlNodes
from kms.sql.outputs import (
    index_output,
    insert_request_id,
    latest_write_grant,
    read_node_standing,
    request_id_used,
)
from kms.sql.store import Store
from kms.usecases.release import ClientCertificate, check_client_certificate, check_skew
from policies.errors import Code as PolicyCode
from proto.contract import BodyRejected, decode_output_body, output_transcript

REQUEST_ID_BYTES = 16
DIGEST_BYTES = 32
MAX_JOB = 128


@dataclass(frozen=True)
class OutputRecord:
    """The decoded body of a ``RecordOutput`` request."""

    node_id: str
    key_name: str
    key_version: int
    request_id: bytes
    timestamp: datetime
    header_sha256: bytes
    output_sha256: bytes
    output_size: int
    sealed_sha256: bytes
    job_name: str
    step: int | None


class OutputRefused(KmsError):
    """A refused, recorded output request; ``audit_sequence`` of its ``model.output`` deny entry."""

    def __init__(self, code: str, message: str, audit_sequence: int) -> None:
        known = code in Code.__members__
        hint = None if known else "the node must be ATTESTED with a current lease: renew, or register again"
        super().__init__(message, code=Code(code) if known else Code.REQUEST_INVALID, hint=hint)
        self.code = code  # type: ignore[assignment]  # a policy or kms code, as for ReleaseDenied
        self.audit_sequence = audit_sequence


def _invalid(message: str) -> KmsError:
    return KmsError(message, code=Code.REQUEST_INVALID)


def decode(body: bytes, signature: bytes) -> OutputRecord:
    """Parse and shape-check the signed body (not yet authenticated)."""
    try:
        msg = decode_output_body(body)
    except BodyRejected as err:
        raise KmsError(err.message, code=Code(err.code)) from None
    if len(signature) != 64:
        raise _invalid("signature must be 64 bytes (Ed25519)")
    if not 1 <= len(msg.node_id) <= 64 or not msg.node_id.isascii():
        raise _invalid("node_id must be 1-64 ASCII characters")
    if not is_valid_key_name(msg.key_name):
        raise _invalid(f"key_name must be {KEY_NAME_RULE}")
    if msg.key_version < 1:
        raise _invalid("key_version must be >= 1 (the version in the sealed file's header)")
    if len(msg.request_id) != REQUEST_ID_BYTES:
        raise _invalid(f"request_id must be {REQUEST_ID_BYTES} bytes")
    if not msg.HasField("timestamp"):
        raise _invalid("timestamp is required")
    for name in ("header_sha256", "output_sha256", "sealed_sha256"):
        if len(getattr(msg, name)) != DIGEST_BYTES:
            raise _invalid(f"{name} must be {DIGEST_BYTES} bytes")
    if len(msg.job_name) > MAX_JOB or not all(" " <= c <= "~" for c in msg.job_name):
        raise _invalid(f"job_name must be at most {MAX_JOB} printable ASCII characters")
    if msg.output_size > 10**15 - 1 or (msg.HasField("step") and msg.step > 10**15 - 1):
        raise _invalid("output_size and step must be below 10^15")
    try:
        timestamp = msg.timestamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise _invalid("timestamp is out of range") from None
    return OutputRecord(
        node_id=msg.node_id,
        key_name=msg.key_name,
        key_version=msg.key_version,
        request_id=bytes(msg.request_id),
        timestamp=timestamp,
        header_sha256=bytes(msg.header_sha256),
        output_sha256=bytes(msg.output_sha256),
        output_size=msg.output_size,
        sealed_sha256=bytes(msg.sealed_sha256),
        job_name=msg.job_name,
        step=msg.step if msg.HasField("step") else None,
    )


def output_fields(rec: OutputRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "node_id": rec.node_id,
        "key_name": rec.key_name,
        "key_version": rec.key_version,
        "request_id": rec.request_id.hex(),
        "header_sha256": rec.header_sha256.hex(),
        "output_sha256": rec.output_sha256.hex(),
        "output_size": rec.output_size,
        "sealed_sha256": rec.sealed_sha256.hex(),
    }
    if rec.job_name:
        fields["job_name"] = rec.job_name
    if rec.step is not None:
        fields["step"] = rec.step
    return fields


class _Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code)
        self.code = code
        self.message = message


class OutputRecorder:
    def __init__(
        self,
        store: Store,
        ledger: AuditLedger,
        clock: Clock,
        *,
        skew: timedelta = timedelta(seconds=120),
    ) -> None:
        self._store = store
        self._nodes = SqlNodes(store)
        self._ledger = ledger
        self._clock = clock
        self._skew = skew

    def record(self, body: bytes, signature: bytes, peer: ClientCertificate | None) -> int:
        """Record the output; its ``model.output`` ledger sequence. Raises ``KmsError`` (malformed or
        unauthenticated: not recorded) or ``OutputRefused`` (recorded as a deny entry)."""
        rec = decode(body, signature)
        node = self._nodes.get(rec.node_id)
        if node is None:
            raise KmsError(
                f"no node with id {rec.node_id!r}", code=Code.NODE_NOT_FOUND, hint="register first"
            )
        try:
            VerifyKey(node.signing_public).verify(output_transcript(body), signature)
        except (BadSignatureError, ValueError, TypeError):
            raise KmsError(
                "the request signature does not verify with the node's registered key",
                code=Code.REQUEST_SIGNATURE_INVALID,
                hint="sign 'sovereign/v1 output' || body with the key registered for this node_id",
            ) from None
        now = self._clock()
        try:
            if peer is not None:
                mismatch = check_client_certificate(peer, node.node_id, node.signing_public)
                if mismatch is not None:
                    raise _Refusal(mismatch.code, mismatch.message)
            try:
                check_skew(rec.timestamp, now, self._skew)
            except KmsError as err:
                raise _Refusal(err.code.value, err.message) from None
            with self._store.transaction() as conn:
                self._check(conn, rec, now)
                insert_request_id(
                    conn, rec.node_id, rec.request_id.hex(), max(now, rec.timestamp) + self._skew
                )
                draft = Draft(
                    Kind.MODEL_OUTPUT, node_actor(rec.node_id), Decision.GRANT, (), output_fields(rec)
                )
                (seq,) = append_entries(conn, [draft], now)
                index_output(conn, seq, rec.output_sha256.hex(), rec.sealed_sha256.hex())
                return seq
        except _Refusal as refusal:
            fields = output_fields(rec)
            draft = Draft(
                Kind.MODEL_OUTPUT,
                node_actor(rec.node_id),
                Decision.DENY,
                (Reason(refusal.code, refusal.message[:1024]),),
                fields,
            )
            (seq,) = self._ledger.record(draft)
            raise OutputRefused(refusal.code, refusal.message, seq) from None

    def _check(self, conn: Connection, rec: OutputRecord, now: datetime) -> None:
        row = read_node_standing(conn, rec.node_id)
        if row is None or NodeState(row.state) is not NodeState.ATTESTED:
            state = "unknown" if row is None else row.state
            raise _Refusal(
                PolicyCode.RELEASE_NODE_NOT_ATTESTED.value,
                f"node {rec.node_id} is {state}: only an ATTESTED node records outputs",
            )
        expires = row.lease_expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires is None or expires <= now:
            raise _Refusal(PolicyCode.RELEASE_LEASE_EXPIRED.value, f"node {rec.node_id}'s lease has expired")
        if request_id_used(conn, rec.node_id, rec.request_id.hex()):
            raise _Refusal(Code.REQUEST_REPLAYED.value, "this request id was already used by this node")
        if latest_write_grant(conn, rec.node_id, rec.key_name, rec.key_version) is None:
            raise _Refusal(
                Code.OUTPUT_NO_WRITE_GRANT.value,
                f"node {rec.node_id} holds no write grant for {rec.key_name} v{rec.key_version}",
            )
