"""Key release (DESIGN.md, Protocol 4): the one use case the KeyRelease servicer and the tests run.

For one signed request, in order: shape checks (malformed -> REQUEST_INVALID, nothing recorded), the
node's registered key verifies the signature over "sovereign/v1 release" || body (unknown node or bad
signature: refused, not recorded, since nothing authenticated the request), the TLS client certificate
names that node and key (on the mutual-TLS port), the timestamp lies in the skew window, the release
policy entitles the node, and the grant's premises hold (``kms.domain.premises``: node, lease, key, version,
policy version) on short-lived cached reads; then the batched stage (``kms.usecases.grants``) unwraps in OpenBao
transit and, in one transaction, checks the same premises on fresh reads (plus the request id's
freshness) and appends the grant; only after that commit is the key sealed with HPKE to the node's
attested KEM key under the release AAD. A grant refused at commit because the node's lease changed (a
renewal the cached read did not show) is decided once more, on fresh reads.

Grants and every refusal of an authenticated request are audit ledger entries (``release.grant`` /
``release.deny``): the grant's ledger sequence is the ``audit_sequence`` in the AAD and the reply;
nothing is ever recorded as granted for a denial. The plaintext key lives only in memory, from the
batch decrypt to the seal (CPython cannot wipe it; it is never logged or repr'd).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from attestation.coded import CodedError, Reason
from kms.clock import Clock
from kms.domain.catalogue import Catalogue, KeyRecord
from kms.domain.premises import Grant, Snapshot, check_premises, key_standing, key_usable, node_standing
from kms.domain.registry import POLICY_STATE, NodeRecord
from kms.envelope import EnvelopeError, check_recipient_key, release_aad, seal_key, suite_by_id_bytes
from kms.envelope.names import KEY_NAME_RULE, is_valid_key_name
from kms.errors import CatalogueError, Code, KmsError, OpenBaoError, reason_for
from kms.sql.decisions import DenialRow, GrantRow, PendingGrant
from kms.sql.nodes import SqlNodes
from kms.sql.store import Store
from kms.usecases.cache import TtlCache
from kms.usecases.grants import GrantLedger, GrantRequest, Outcome, Refused
from kms.usecases.lineage_release import LineageRestrictions
from kms.usecases.metrics import Metrics
from kms.usecases.policy_source import PolicySource
from policies import decide_release
from policies.errors import Code as PolicyCode
from proto.contract import MAX_BODY, release_transcript

SIGNATURE_BYTES = 64
REQUEST_ID_BYTES = 16
DEFAULT_SKEW = timedelta(seconds=120)
PURPOSES = ("read", "write")
# Policy reasons about the node's standing, as opposed to the key or the rules.
STANDING_CODES = frozenset(
    {PolicyCode.RELEASE_NODE_NOT_ATTESTED.value, PolicyCode.RELEASE_LEASE_EXPIRED.value}
)


@dataclass(frozen=True)
class ReleaseBody:
    node_id: str
    key_name: str
    purpose: str  # "read" | "write"
    request_id: bytes
    timestamp: datetime
    key_version: int  # 0 = latest


@dataclass(frozen=True)
class SignedRelease:
    body: bytes  # the exact bytes the node signed
    signature: bytes
    fields: ReleaseBody


@dataclass(frozen=True)
class Released:
    sealed_key: bytes = field(repr=False)
    key_name: str
    key_version: int
    purpose: str
    audit_sequence: int
    lease_expires_at: datetime
    aad: bytes


class ReleaseDenied(CodedError):
    """A refused release. ``code`` is the first reason's code (from any core); ``denial_id`` the ledger
    sequence of the ``release.deny`` entry (0: not recorded; entry 0 is always the first server.start)."""

    def __init__(self, reasons: Sequence[Reason], denial_id: int = 0) -> None:
        first = reasons[0]
        super().__init__(first.code, first.message, first.hint)
        self.reasons = tuple(reasons)
        self.denial_id = denial_id

    @property
    def audit_sequence(self) -> int:
        return self.denial_id


def _invalid(message: str) -> KmsError:
    return KmsError(message, code=Code.REQUEST_INVALID)


def check_shape(req: SignedRelease) -> None:
    f = req.fields
    if len(req.body) > MAX_BODY:
        raise _invalid(f"body exceeds {MAX_BODY} bytes")
    if len(req.signature) != SIGNATURE_BYTES:
        raise _invalid("signature must be 64 bytes (Ed25519)")
    if not 1 <= len(f.node_id) <= 64 or not f.node_id.isascii():
        raise _invalid("node_id must be 1-64 ASCII characters")
    if not is_valid_key_name(f.key_name):
        raise _invalid(f"key_name must be {KEY_NAME_RULE}")
    if f.purpose not in PURPOSES:
        raise _invalid("purpose must be PURPOSE_READ or PURPOSE_WRITE")
    if len(f.request_id) != REQUEST_ID_BYTES:
        raise _invalid(f"request_id must be {REQUEST_ID_BYTES} bytes")
    if f.timestamp.tzinfo is None:
        raise _invalid("timestamp is required")
    if f.key_version < 0:
        raise _invalid("key_version must be >= 0")


def verify_signature(signing_public: bytes, body: bytes, signature: bytes) -> None:
    try:
        VerifyKey(signing_public).verify(release_transcript(body), signature)
    except (BadSignatureError, ValueError, TypeError):
        raise KmsError(
            "the request signature does not verify with the node's registered key",
            code=Code.REQUEST_SIGNATURE_INVALID,
            hint="sign 'sovereign/v1 release' || body with the key registered for this node_id",
        ) from None


def check_skew(timestamp: datetime, now: datetime, skew: timedelta) -> None:
    if abs(timestamp - now) > skew:
        raise KmsError(
            f"request time {timestamp.isoformat()} is more than {int(skew.total_seconds())} s from the "
            f"server time {now.isoformat()}",
            code=Code.REQUEST_CLOCK_SKEW,
            hint="synchronise the node's clock",
        )


@functools.lru_cache(maxsize=4096)
def check_sealable(kem_suite: bytes, kem_public: bytes) -> None:
    """Raise ``NODE_KEM_KEY_INVALID`` unless keys can be sealed to this node key (registration checks
    it too; this catches rows stored before it did). Cached: the answer depends on the bytes alone."""
    try:
        check_recipient_key(suite_by_id_bytes(kem_suite), kem_public)
    except EnvelopeError as err:
        raise KmsError(
            f"keys cannot be sealed to this node's registered KEM key: {err.message}",
            code=Code.NODE_KEM_KEY_INVALID,
        ) from None


class ClientCertificate(Protocol):
    """Who the TLS client certificate of the call names (``kms.server.node_certs.PeerIdentity``)."""

    @property
    def node_id(self) -> str: ...

    @property
    def signing_public(self) -> bytes: ...


class Denial(CodedError):
    """A refusal decided before any decrypt, not yet recorded; ``row`` is what the ``release.deny`` entry
    records. ``KeyRelease`` records it and raises ``ReleaseDenied`` in its place."""

    def __init__(self, reasons: Sequence[Reason], row: DenialRow) -> None:
        super().__init__(reasons[0].code, reasons[0].message, reasons[0].hint)
        self.reasons = reasons
        self.row = row


def _denial(
    f: ReleaseBody, now: datetime, reasons: Sequence[Reason], ledger_only: Sequence[Reason] = ()
) -> Denial:
    """``reasons`` go to the node and the ledger; ``ledger_only`` to the ledger alone."""
    first = reasons[0]
    more = tuple((r.code, r.message) for r in [*reasons[1:], *ledger_only])
    row = DenialRow(
        now, f.node_id, f.key_name, f.purpose, f.request_id, first.code, first.message, more_reasons=more
    )
    return Denial(reasons, row)


def check_client_certificate(peer: ClientCertificate, node_id: str, signing_public: bytes) -> Reason | None:
    """The certificate must have been issued to the node that signed the request, for the same key."""
    if peer.node_id == node_id and peer.signing_public == signing_public:
        return None
    return reason_for(
        Code.RELEASE_CLIENT_CERT_MISMATCH,
        f"the client certificate was issued to node {peer.node_id[:64]!r}, not to {node_id[:64]!r}",
        "each node must use its own client certificate (issued by Register/Renew)",
    )


@dataclass(frozen=True)
class Prepared:
    """A request that passed every check before the unwrap: what the batched stage needs."""

    node: NodeRecord
    fields: ReleaseBody
    grant: GrantRequest


class KeyRelease:
    def __init__(
        self,
        store: Store,
        *,
        catalogue: Catalogue,
        ledger: GrantLedger,
        policies: PolicySource,
        clock: Clock,
        skew: timedelta = DEFAULT_SKEW,
        metrics: Metrics | None = None,
        cache_seconds: float = 5.0,
        lineage: LineageRestrictions | None = None,
    ) -> None:
        self._nodes = SqlNodes(store)
        self._lineage = lineage if lineage is not None else LineageRestrictions(store)
        self._catalogue = catalogue
        self._ledger = ledger
        self._policies = policies
        self._clock = clock
        self._skew = skew
        self._metrics = metrics
        # Every grant's premises are checked again inside its transaction (kms.usecases.grants), so short-lived
        # copies only ever delay a refusal to commit time; and a refusal decided on them is decided
        # again on fresh reads before it is reported.
        self._node_cache: TtlCache[str, NodeRecord | None] = TtlCache(cache_seconds)
        self._key_cache: TtlCache[str, KeyRecord | None] = TtlCache(cache_seconds)
        self._cache_seconds = cache_seconds

    async def release(self, req: SignedRelease, peer: ClientCertificate | None = None) -> Released:
        """Release the key ``req`` asks for, sealed to the node; ``peer``: the call's TLS client
        certificate (None: the call came without mutual TLS, the insecure dev mode). Raises
        ``KmsError`` (not recorded: malformed or unauthenticated) or ``ReleaseDenied`` (recorded)."""
        started = time.perf_counter()
        try:
            prepared, outcome = await self._attempt(req, peer, fresh=False)
            if _lease_changed(outcome):  # renewed since the cached read: check again, once
                prepared, outcome = await self._attempt(req, peer, fresh=True)
            return self._finish(prepared, outcome)
        except (ReleaseDenied, KmsError) as err:
            self.refused(str(err.code))
            raise
        finally:
            if self._metrics is not None:
                self._metrics.release_seconds.observe(time.perf_counter() - started)

    def refused(self, code: str) -> None:
        """Count a refused request (also those the servicer refuses before decoding them)."""
        if self._metrics is not None:
            self._metrics.denials.labels(code).inc()

    async def _attempt(
        self, req: SignedRelease, peer: ClientCertificate | None, *, fresh: bool
    ) -> tuple[Prepared, Outcome]:
        try:
            prepared = self._prepare(req, peer, fresh=fresh)
        except Denial as denial:
            denial_id = await self._ledger.deny(denial.row)
            raise ReleaseDenied(denial.reasons, denial_id) from None
        return prepared, await self._ledger.grant(prepared.grant)

    def _prepare(self, req: SignedRelease, peer: ClientCertificate | None, *, fresh: bool) -> Prepared:
        """Every check that needs no write. A denial decided on cached reads is decided again on fresh
        ones, so a node approved or a key enabled a moment ago is not refused."""
        if not fresh:
            try:
                return self._decide(req, peer, fresh=False)
            except Denial:
                pass
        return self._decide(req, peer, fresh=True)

    def _decide(self, req: SignedRelease, peer: ClientCertificate | None, *, fresh: bool) -> Prepared:
        check_shape(req)
        f = req.fields
        node = self._node_cache.get(f.node_id, lambda: self._nodes.get(f.node_id), fresh=fresh)
        if node is None:
            raise KmsError(f"no node with id {f.node_id!r}", code=Code.NODE_NOT_FOUND, hint="register first")
        verify_signature(node.signing_public, req.body, req.signature)
        now = self._clock()
        mismatch = None if peer is None else check_client_certificate(peer, node.node_id, node.signing_public)
        if mismatch is not None:
            raise _denial(f, now, [mismatch])
        try:
            check_skew(f.timestamp, now, self._skew)
            check_sealable(node.kem_suite, node.kem_public)  # no grant is recorded for a seal that fails
        except KmsError as err:
            raise _denial(f, now, [err.as_reason()]) from None
        policy = self._policies.active(max_age=0 if fresh else self._cache_seconds)
        decision = decide_release(
            policy.policy,
            node_groups=node.groups,
            node_state=POLICY_STATE[node.state],
            key_name=f.key_name,
            purpose=f.purpose,
            lease_expires_at=node.lease_expires_at,
            evidence_time=node.evidence_time,
            now=now,
        )
        reasons = [Reason(r.code.value, r.message) for r in decision.reasons]
        standing = [r for r in reasons if r.code in STANDING_CODES]
        if standing:
            raise _denial(f, now, standing + [r for r in reasons if r not in standing])
        if not decision.allowed or decision.rule is None:
            # decided before the catalogue is read: a node no rule entitles to the key learns nothing
            # about whether it exists; only the ledger has the catalogue's answer
            status = key_usable(f.key_name, key_standing(self._key(f.key_name, fresh=fresh)))
            raise _denial(f, now, reasons, ledger_only=[status] if status else [])
        groups = frozenset(node.groups)
        restricted = self._lineage.check(
            policy.policy, rule_name=decision.rule, purpose=f.purpose, node_groups=groups, key_name=f.key_name
        )
        if restricted is not None:
            raise _denial(f, now, [restricted])
        # WRITE must get the latest version: read it fresh (writes are rare)
        key = self._key(f.key_name, fresh=fresh or f.purpose == "write")
        version = f.key_version or (key.current_version if key is not None else 0)
        grant = Grant(
            node_id=f.node_id,
            lease_id=node.lease_id or "",
            key_name=f.key_name,
            key_version=version,
            purpose=f.purpose,
            policy_version=policy.version,
            decided_at=now,
        )
        failed = check_premises(grant, Snapshot(node_standing(node), key_standing(key), policy.version))
        if failed is not None:
            raise _denial(f, now, [failed])
        assert key is not None, "check_premises refuses a key that does not exist"
        ciphertext = key.version(version).ciphertext
        assert ciphertext is not None, "check_premises refuses a version without wrapped material"
        row = GrantRow(
            granted_at=now,
            node_id=f.node_id,
            key_name=f.key_name,
            key_version=version,
            purpose=f.purpose,
            request_id=f.request_id,
            openbao_request_id="",  # filled in after the decrypt
            lease_expires_at=now + timedelta(seconds=decision.lease_seconds),
            policy_version=policy.version,
            rule=decision.rule,
        )
        # the request id is remembered until its timestamp can no longer pass the skew check
        pending = PendingGrant(row, grant.lease_id or "", max(now, f.timestamp) + self._skew)
        recheck = self._lineage.recheck(  # run again in the commit transaction, with the premises
            policy.policy, rule_name=decision.rule, purpose=f.purpose, node_groups=groups, key_name=f.key_name
        )
        return Prepared(node, f, GrantRequest(ciphertext, pending, recheck))

    def _key(self, name: str, *, fresh: bool) -> KeyRecord | None:
        return self._key_cache.get(name, lambda: _describe(self._catalogue, name), fresh=fresh)

    def _finish(self, prepared: Prepared, outcome: Outcome) -> Released:
        if isinstance(outcome, OpenBaoError):
            raise outcome
        if isinstance(outcome, Refused):
            self._node_cache.clear()
            self._key_cache.clear()
            raise ReleaseDenied([outcome.reason], outcome.audit_sequence)
        row = prepared.grant.pending.row
        return self._seal(prepared.node, prepared.fields, row, outcome.sequence, outcome.plaintext)

    def _seal(self, node: NodeRecord, f: ReleaseBody, row: GrantRow, sequence: int, key: bytes) -> Released:
        aad = release_aad(
            node_id=f.node_id,
            key_name=f.key_name,
            key_version=row.key_version,
            purpose=f.purpose,
            request_id=f.request_id,
            audit_sequence=sequence,
            lease_expiry=int(row.lease_expires_at.timestamp()),
        )
        sealed = seal_key(node.kem_public, suite_by_id_bytes(node.kem_suite), key, aad)
        if self._metrics is not None:
            self._metrics.releases.labels(f.purpose).inc()
        return Released(sealed, f.key_name, row.key_version, f.purpose, sequence, row.lease_expires_at, aad)


def _describe(catalogue: Catalogue, name: str) -> KeyRecord | None:
    try:
        return catalogue.describe(name)
    except CatalogueError as err:
        if err.code is Code.KEY_NOT_FOUND:
            return None
        raise


def _lease_changed(outcome: Outcome) -> bool:
    """The commit refused the grant because the node's lease is not the one the checks saw: a renewal
    that the cached node record did not show yet, or one that landed in between. Such a request is
    worth deciding again once, on fresh reads (the refusal stays in the ledger, with its decrypt; the
    request id was not used up)."""
    return isinstance(outcome, Refused) and outcome.reason.code == Code.RELEASE_NODE_CHANGED.value
