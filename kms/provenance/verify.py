"""Offline verification of a provenance statement, with public keys alone (docs/provenance.md).

Every check must pass. The order decides only which code a tampered statement gets: the ledger evidence
is checked first (it is signed by the audit key independently of the statement), then the statement is
compared with what that evidence says, and last the DSSE signature by the provenance key. So an edited
subject is ``PROVENANCE_SUBJECT_MISMATCH``, an edited predicate ``PROVENANCE_PREDICATE_MISMATCH``, a proof
swapped ``PROVENANCE_PROOF_INVALID``, an older checkpoint ``PROVENANCE_CHECKPOINT_ROLLBACK``, an envelope
re-signed by another key ``PROVENANCE_SIGNATURE_INVALID``, a grant or output after the node's revocation
``PROVENANCE_GRANT_AFTER_REVOCATION``.

``StatementVerifier`` verifies many statements with one set of keys. Within its life it remembers the
checks that passed and depend only on their exact inputs: a checkpoint's signature (by every field of the
checkpoint, signature bytes included), an entry's decoding (by its exact text), an inclusion proof (by
position, tree size, root, leaf hash and proof) and consistency with the trusted checkpoint. Statements
issued against one checkpoint share most of that, so a batch verifies each once. Only successes are
remembered, and the keys are fixed for the verifier's life: a statement differing in one byte of any of
those inputs is checked again in full. The DSSE signature is checked for every statement.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from in_toto_attestation.v1 import statement as intoto_statement
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from securesystemslib import dsse, exceptions

from kms.audit.checkpoint import AuditKeys, Checkpoint, load_audit_keys
from kms.audit.entry import Entry
from kms.audit.errors import AuditError
from kms.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from kms.provenance.errors import ProvenanceCode, ProvenanceError
from kms.provenance.lineage import Lineage, LineageInvalid, after_revocation, derive
from kms.provenance.statement import (
    KEY_NAME,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    claims_digest,
    key_id,
)

C = ProvenanceCode
SUBJECT_KEYS = frozenset({"name", "digest", "annotations"})
MAX_ENVELOPE = 16 * 1024 * 1024
REMEMBERED = 20_000  # checks a verifier remembers per kind; past that it starts over (memory stays bounded)


@dataclass(frozen=True)
class PublicKeys:
    """The audit key (checkpoints) and the provenance key (statements), every version each."""

    audit: AuditKeys
    provenance: AuditKeys


def load_public_keys(audit_json: bytes, provenance_json: bytes) -> PublicKeys:
    """From the files ``sovereign provenance keys --out DIR`` writes (audit.json, provenance.json)."""
    try:
        return PublicKeys(load_audit_keys(audit_json), load_audit_keys(provenance_json))
    except AuditError as err:
        raise ProvenanceError(C.PROVENANCE_KEYS_INVALID, err.message) from None


@dataclass(frozen=True)
class TrustedCheckpoint:
    """A checkpoint the verifier trusts (from a witness or an earlier fetch) and, when its size differs
    from the statement's, the RFC 9162 consistency proof between the two (smaller size first)."""

    checkpoint: Checkpoint
    consistency: tuple[bytes, ...] = ()


def load_trusted(data: bytes) -> TrustedCheckpoint:
    """A bare checkpoint object, or ``{"checkpoint": {...}, "consistency": [hex...]}``."""
    try:
        obj = json.loads(data)
        if isinstance(obj, dict) and "checkpoint" in obj:
            proof = tuple(bytes.fromhex(h) for h in obj.get("consistency", []))
            return TrustedCheckpoint(Checkpoint.from_obj(obj["checkpoint"]), proof)
        return TrustedCheckpoint(Checkpoint.from_obj(obj))
    except (ValueError, TypeError, AuditError, RecursionError) as err:
        raise ProvenanceError(
            C.PROVENANCE_MALFORMED, f"the trusted checkpoint file does not parse: {err}"
        ) from None


@dataclass(frozen=True)
class Verified:
    """A statement that passed every check: what it proves."""

    statement: dict[str, Any]
    lineage: Lineage
    checkpoint: Checkpoint
    key_version: int

    @property
    def predicate(self) -> dict[str, Any]:
        predicate: dict[str, Any] = self.statement["predicate"]
        return predicate

    @property
    def subject_sha256(self) -> tuple[str, str]:
        subject = self.statement["subject"]
        return subject[0]["digest"]["sha256"], subject[1]["digest"]["sha256"]


def _malformed(message: str) -> ProvenanceError:
    return ProvenanceError(C.PROVENANCE_MALFORMED, message)


def _envelope(data: bytes) -> tuple[dsse.Envelope, dict[str, Any]]:
    if len(data) > MAX_ENVELOPE:
        raise _malformed(f"the envelope is over {MAX_ENVELOPE} bytes")
    try:
        envelope = dsse.Envelope.from_dict(json.loads(data))
        statement = json.loads(envelope.payload)
    except (ValueError, KeyError, TypeError, RecursionError, exceptions.FormatError, binascii.Error):
        raise _malformed("not a DSSE envelope (JSON) with a JSON payload") from None
    if envelope.payload_type != PAYLOAD_TYPE or len(envelope.signatures) != 1:
        raise _malformed(f"the envelope must carry one signature over a payload of type {PAYLOAD_TYPE}")
    if not isinstance(statement, dict):
        raise _malformed("the payload is not a JSON object")
    return envelope, statement


def _shape(statement: dict[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1 (checked by in-toto-attestation) with our predicate type and parts."""
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        raise _malformed(f"not an in-toto Statement v1 with predicate type {PREDICATE_TYPE}")
    subject = statement.get("subject")
    if not isinstance(subject, list) or not all(
        isinstance(s, dict)
        and set(s) <= SUBJECT_KEYS
        and isinstance(s.get("digest", {}), dict)
        and isinstance(s.get("annotations", {}), dict)
        for s in subject
    ):
        raise _malformed("the subject is a list of resource descriptors (name, digest, annotations)")
    try:
        descriptors = [
            ResourceDescriptor(
                name=s.get("name", ""), digest=s.get("digest"), annotations=s.get("annotations")
            )
            for s in subject
        ]
        intoto_statement.Statement([d.pb for d in descriptors], PREDICATE_TYPE, {"v": 1}).validate()
    except (ValueError, TypeError, AttributeError) as err:
        raise _malformed(f"not a valid in-toto Statement v1: {err}") from None
    subject = statement["subject"]
    predicate = statement.get("predicate")
    if len(subject) != 2 or not isinstance(predicate, dict):
        raise _malformed("the statement names the output and the sealed file, and has a predicate object")
    for name in ("signer", "output", "node", "cpu", "policy", "write_grant", "ledger"):
        if not isinstance(predicate.get(name), dict):
            raise _malformed(f"predicate.{name} is missing")
    for name in ("datasets", "revocations", "gpus"):
        if not isinstance(predicate.get(name), list):
            raise _malformed(f"predicate.{name} is missing")
    return predicate


def _same(predicate: Mapping[str, Any], derived: Lineage) -> None:
    want = derived.to_obj()
    for name, value in want.items():
        have = predicate.get(name)
        if name == "cpu":
            have = {k: predicate["cpu"].get(k) for k in value}
        if have != value:
            raise ProvenanceError(
                C.PROVENANCE_PREDICATE_MISMATCH, f"predicate.{name} differs from what the ledger entries say"
            )
    cpu = predicate["cpu"]
    claims = cpu.get("claims")
    if claims is not None:
        if not isinstance(claims, dict) or claims_digest(claims) != derived.cpu["claims_digest"]:
            raise ProvenanceError(
                C.PROVENANCE_PREDICATE_MISMATCH,
                "predicate.cpu.claims are not the claims the registration entry's digest names",
            )
        facts = {"chip_id": "platform_id", "debug": "debug", "tcb": "tcb", "simulated": "simulated"}
        for mine, theirs in facts.items():
            if cpu.get(mine) != claims.get(theirs):
                raise ProvenanceError(
                    C.PROVENANCE_PREDICATE_MISMATCH, f"predicate.cpu.{mine} differs from the verified claims"
                )


class _Remembered:
    """Checks that passed, keyed by their exact inputs; bounded (cleared when full)."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, Any] = {}

    def get(self, key: Hashable) -> Any:
        return self._seen.get(key)

    def add(self, key: Hashable, value: Any = True) -> None:
        if len(self._seen) >= REMEMBERED:
            self._seen.clear()
        self._seen[key] = value


@dataclass(frozen=True)
class _Proven:
    """One entry of ``predicate.ledger``: decoded, its leaf hash, its inclusion proof (None: this very
    proof of these very bytes was verified against this tree before) and what to remember it by."""

    entry: Entry
    leaf: bytes
    proof: tuple[bytes, ...] | None
    remember: Hashable


class StatementVerifier:
    """Verifies statements with one set of public keys and, if given, one trusted checkpoint (one thread
    at a time).

    ``verify`` raises ``ProvenanceError`` with the first failing check's code, exactly as
    ``verify_statement`` does; what it remembers between calls is described in the module's docstring.
    """

    def __init__(self, keys: PublicKeys, *, trusted: TrustedCheckpoint | None = None) -> None:
        self._keys = keys
        self._trusted = trusted
        self._provenance: dict[int, Ed25519PublicKey | None] = {}
        self._checkpoints = _Remembered()  # Checkpoint (every field, signature too) -> signature verified
        self._decoded = _Remembered()  # entry text -> (Entry, leaf hash)
        self._included = _Remembered()  # (seq, size, root, leaf, proof) -> inclusion verified
        self._consistent = _Remembered()  # the statement's Checkpoint -> consistent with the trusted one

    def verify(self, data: bytes, *, file_sha256: str | None = None) -> Verified:
        envelope, statement = _envelope(data)
        predicate = _shape(statement)
        checkpoint, proven = self._entries(predicate["ledger"])
        self._check_ledger(checkpoint, proven)
        if self._trusted is not None:
            self._check_trusted(checkpoint, self._trusted)
        output_seq = predicate["output"].get("sequence")
        plain = [p.entry for p in proven]
        try:
            derived = derive(plain, output_seq if isinstance(output_seq, int) else -1)
        except LineageInvalid as err:
            raise ProvenanceError(C.PROVENANCE_PREDICATE_MISMATCH, str(err)) from None
        out_entry = next(e for e in plain if e.seq == derived.output["sequence"])
        subject = statement["subject"]
        if subject[0].get("digest") != {"sha256": out_entry.fields.get("output_sha256")} or subject[1].get(
            "digest"
        ) != {"sha256": out_entry.fields.get("sealed_sha256")}:
            raise ProvenanceError(
                C.PROVENANCE_SUBJECT_MISMATCH,
                f"the subject's digests are not the ones the model.output entry {out_entry.seq} records",
            )
        _same(predicate, derived)
        late = after_revocation(plain, derived)
        if late is not None:
            raise ProvenanceError(C.PROVENANCE_GRANT_AFTER_REVOCATION, late)
        version = self._check_signature(envelope, predicate)
        verified = Verified(statement, derived, checkpoint, version)
        if file_sha256 is not None and file_sha256 not in verified.subject_sha256:
            raise ProvenanceError(
                C.PROVENANCE_FILE_MISMATCH,
                f"the file's SHA-256 {file_sha256[:16]}... is neither the output's nor the sealed file's",
            )
        return verified

    def verify_all(self, statements: Iterable[bytes]) -> list[Verified | ProvenanceError]:
        """One result per statement, in order: a refusal does not stop the others."""
        results: list[Verified | ProvenanceError] = []
        for data in statements:
            try:
                results.append(self.verify(data))
            except ProvenanceError as err:
                results.append(err)
        return results

    def _entries(self, ledger: Mapping[str, Any]) -> tuple[Checkpoint, list[_Proven]]:
        try:
            checkpoint = Checkpoint.from_obj(ledger.get("checkpoint"))
            out = []
            for item in ledger["entries"]:
                text, seq, hexes = item["entry"], item["seq"], tuple(item["proof"])
                remember = (text, seq, checkpoint.size, checkpoint.root, hexes)
                proof = None if self._included.get(remember) else tuple(bytes.fromhex(h) for h in hexes)
                known = self._decoded.get(text) if isinstance(text, str) else None
                if known is None:
                    canonical = text.encode()
                    known = (Entry.decode(canonical), leaf_hash(canonical))
                    self._decoded.add(text, known)
                entry, leaf = known
                if entry.seq != seq:
                    raise ValueError(f"entry {seq} holds the bytes of entry {entry.seq}")
                out.append(_Proven(entry, leaf, proof, remember))
        except (AuditError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise _malformed(f"predicate.ledger does not parse: {getattr(err, 'message', err)}") from None
        if not out:
            raise _malformed("predicate.ledger has no entries")
        return checkpoint, out

    def _signed(self, checkpoint: Checkpoint, what: str) -> None:
        if self._checkpoints.get(checkpoint):
            return
        try:
            self._keys.audit.verify(checkpoint)
        except AuditError as err:
            raise ProvenanceError(C.PROVENANCE_CHECKPOINT_SIGNATURE_INVALID, what + err.message) from None
        self._checkpoints.add(checkpoint)

    def _check_ledger(self, checkpoint: Checkpoint, proven: list[_Proven]) -> None:
        self._signed(checkpoint, "")
        newest = max(p.entry.seq for p in proven)
        if checkpoint.size <= newest:
            raise ProvenanceError(
                C.PROVENANCE_CHECKPOINT_ROLLBACK,
                f"the checkpoint covers {checkpoint.size} entries but the statement proves entry {newest}",
            )
        for p in proven:
            if p.proof is None:
                continue
            seq = p.entry.seq
            try:
                verify_inclusion(seq, checkpoint.size, p.leaf, p.proof, checkpoint.root)
            except AuditError:
                raise ProvenanceError(
                    C.PROVENANCE_PROOF_INVALID,
                    f"the inclusion proof of entry {seq} does not lead to the checkpoint's root "
                    f"(size {checkpoint.size})",
                ) from None
            self._included.add(p.remember)

    def _check_trusted(self, checkpoint: Checkpoint, trusted: TrustedCheckpoint) -> None:
        t = trusted.checkpoint
        self._signed(t, "trusted: ")
        if self._consistent.get(checkpoint):
            return
        if t.size == checkpoint.size:
            if t.root != checkpoint.root:
                raise ProvenanceError(
                    C.PROVENANCE_CONSISTENCY_INVALID, f"two different roots for the tree of size {t.size}"
                )
        else:
            small, large = (checkpoint, t) if checkpoint.size < t.size else (t, checkpoint)
            try:
                verify_consistency(small.size, large.size, small.root, large.root, trusted.consistency)
            except AuditError:
                raise ProvenanceError(
                    C.PROVENANCE_CONSISTENCY_INVALID,
                    f"no valid consistency proof between the statement's checkpoint (size {checkpoint.size}) "
                    f"and the trusted one (size {t.size})",
                ) from None
        self._consistent.add(checkpoint)

    def _public(self, version: int) -> Ed25519PublicKey | None:
        if version not in self._provenance:
            self._provenance[version] = self._keys.provenance.for_version(version)
        return self._provenance[version]

    def _check_signature(self, envelope: dsse.Envelope, predicate: Mapping[str, Any]) -> int:
        """DSSE: the one signature, under keyid ``<key>:v<version>``, over the PAE (securesystemslib's),
        with that version's Ed25519 key (what securesystemslib's ed25519 scheme checks, minus rebuilding
        the key from hex for every statement)."""
        signer = predicate["signer"]
        version = signer.get("version")
        if signer.get("key") != KEY_NAME or not isinstance(version, int) or isinstance(version, bool):
            raise ProvenanceError(
                C.PROVENANCE_SIGNATURE_INVALID, f"the signer is not a version of {KEY_NAME}"
            )
        public = self._public(version)
        if public is None:
            raise ProvenanceError(
                C.PROVENANCE_SIGNATURE_INVALID, f"{KEY_NAME} v{version} is not among the given public keys"
            )
        (signature,) = envelope.signatures.values()
        try:
            if signature.keyid != key_id(version):
                raise ValueError("another key id")
            public.verify(bytes.fromhex(signature.signature), envelope.pae())
        except (InvalidSignature, ValueError):
            raise ProvenanceError(
                C.PROVENANCE_SIGNATURE_INVALID,
                f"the envelope's signature does not verify with {KEY_NAME} v{version}",
            ) from None
        return version


def verify_statement(
    data: bytes,
    keys: PublicKeys,
    *,
    trusted: TrustedCheckpoint | None = None,
    file_sha256: str | None = None,
) -> Verified:
    """Verify the DSSE envelope ``data``; raises ``ProvenanceError`` with the first failing check's code."""
    return StatementVerifier(keys, trusted=trusted).verify(data, file_sha256=file_sha256)


def lineage_text(verified: Verified) -> list[str]:
    """The lineage for people: datasets -> node and its hardware -> output."""
    p = verified.predicate
    cpu, out = p["cpu"], p["output"]
    lines = ["datasets (keys released to the node for reading):"]
    lines += [f"  {d['key']} v{d['version']}  (ledger #{d['sequence']}, {d['time']})" for d in p["datasets"]]
    if not p["datasets"]:
        lines.append("  (none)")
    lines.append(f"node {p['node']['name']} ({p['node']['id']})")
    lines.append(
        f"  {cpu['tee']} measurement {cpu['measurement']}  TCB {cpu['tcb_status']}  chip {cpu.get('chip_id')}"
        f"  debug {cpu.get('debug')}  (registration #{cpu['registration_sequence']})"
    )
    lines.append(f"  GPUs: {len(p['gpus'])}")
    verified_gpus = ((cpu.get("claims") or {}).get("details") or {}).get("gpus")
    full = (
        {g.get("ueid"): g for g in verified_gpus if isinstance(g, dict)}
        if isinstance(verified_gpus, list)
        else {}
    )
    for g in p["gpus"]:
        more = full.get(g["ueid"], {})
        rim = f"  RIM versions match {more['rim_versions_match']}" if "rim_versions_match" in more else ""
        lines.append(
            f"    {g['architecture']} {g['ueid']}  driver {g['driver_version']}  VBIOS {g['vbios_version']}"
            f"  measurements {g['measurement_result']}{rim}"
        )
    lines.append(f"  policy v{p['policy']['version']} digest {p['policy']['digest']}")
    lines.append(
        f"  write grant {p['write_grant']['key']} v{p['write_grant']['version']} (#{p['write_grant']['sequence']})"
    )
    job = f" job {out['job']}" if out["job"] else ""
    step = f" step {out['step']}" if out["step"] is not None else ""
    lines.append(f"output sha256 {verified.subject_sha256[0]}  ({out['size']} bytes){job}{step}")
    lines.append(f"  sealed sha256 {verified.subject_sha256[1]}  (ledger #{out['sequence']}, {out['time']})")
    lines.append(
        f"proved against checkpoint size {verified.checkpoint.size} ({verified.checkpoint.time}); "
        f"signed by {KEY_NAME} v{verified.key_version}"
    )
    return lines
