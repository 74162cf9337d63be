"""The statement: an in-toto Statement v1 about one output, in a DSSE envelope (securesystemslib).

Subject: the output's plaintext (``name`` "output") and the sealed file ("output.sealed"), each by its
SHA-256. Predicate (``PREDICATE_TYPE``): the lineage (``kms.provenance.lineage``; its ``gpus`` are the
verified GPUs the registration entry lists), the node's verified CPU claims (their digest is in the
registration entry), who signed (key name and version: inside the signed payload), when, and the ledger
evidence: every entry the lineage rests on, byte-exact, with its RFC 9162 inclusion proof against one
signed checkpoint.

The payload is the RFC 8785 encoding of the statement; the envelope is DSSE's JSON form with one
signature whose keyid is ``<key name>:v<version>``. An issuer signing many statements builds each
payload with ``encode_statement`` (the encoding of every proven entry is made once and reused), signs
the ``pae`` of each in one batch and wraps each signature with ``signed_envelope``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import rfc8785
from securesystemslib import dsse
from securesystemslib.signer import Key, Signature, Signer, SSlibKey

from kms.audit.checkpoint import Checkpoint
from kms.provenance.lineage import Lineage

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "urn:sovereign:training-provenance:v1"
KEY_NAME = "sovereign-provenance"


@dataclass(frozen=True)
class ProvenEntry:
    """One ledger entry (its exact canonical bytes) and its inclusion proof in the checkpoint's tree."""

    seq: int
    canonical: bytes
    proof: tuple[bytes, ...]
    # the RFC 8785 encoding of the entry's text (``canonical`` as a JSON string), when already made
    entry_json: bytes | None = field(default=None, compare=False, repr=False)

    def to_obj(self) -> dict[str, Any]:
        return {"seq": self.seq, "entry": self.canonical.decode(), "proof": [h.hex() for h in self.proof]}

    @cached_property
    def encoded(self) -> bytes:
        """The RFC 8785 encoding of ``to_obj()`` (members in key order: entry, proof, seq)."""
        entry = self.entry_json if self.entry_json is not None else encode_text(self.canonical)
        # hex digits need no escaping: this is RFC 8785's encoding of the list of hex strings
        proof = b"[" + b",".join(b'"' + h.hex().encode() + b'"' for h in self.proof) + b"]"
        return b'{"entry":' + entry + b',"proof":' + proof + b',"seq":' + str(self.seq).encode() + b"}"


def encode_text(canonical: bytes) -> bytes:
    """The RFC 8785 encoding of an entry's canonical bytes as a JSON string (the costly part of a payload:
    a ledger entry is JSON text, so every quote in it is escaped)."""
    data: bytes = rfc8785.dumps(canonical.decode())
    return data


def claims_digest(claims: Mapping[str, Any]) -> str:
    """The registry's digest of verified claims (kms.domain.registry.claims_digest): sorted-key compact JSON."""
    return hashlib.sha256(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    """The RFC 8785 encoding of a node's claims (what ``encode_statement`` may splice in)."""
    data: bytes = rfc8785.dumps(dict(claims))
    return data


def cpu_claims(lineage: Lineage, claims: Mapping[str, Any] | None) -> dict[str, Any]:
    """The lineage's CPU part plus what the full claims say (when they are the registration's)."""
    cpu = dict(lineage.cpu)
    if claims is not None and claims_digest(claims) == cpu["claims_digest"]:
        cpu.update(
            chip_id=claims.get("platform_id"),
            debug=claims.get("debug"),
            tcb=claims.get("tcb"),
            simulated=claims.get("simulated"),
            claims=dict(claims),
        )
    else:
        cpu.update(chip_id=None, debug=None, tcb=None, simulated=None, claims=None)
    return cpu


def build_statement(
    lineage: Lineage,
    *,
    claims: Mapping[str, Any] | None,
    output_sha256: str,
    key_version: int,
    issued_at: str,
    checkpoint: Checkpoint,
    entries: Sequence[ProvenEntry],
) -> dict[str, Any]:
    name = lineage.output["job"] or lineage.output["key"]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": "output", "digest": {"sha256": output_sha256}, "annotations": {"of": name}},
            {"name": "output.sealed", "digest": {"sha256": lineage.output["sealed_sha256"]}},
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "signer": {"key": KEY_NAME, "version": key_version},
            "issued_at": issued_at,
            **lineage.to_obj(),
            "cpu": cpu_claims(lineage, claims),
            "ledger": {
                "checkpoint": checkpoint.to_obj(),
                "entries": [e.to_obj() for e in sorted(entries, key=lambda e: e.seq)],
            },
        },
    }


def encode_payload(statement: Mapping[str, Any]) -> bytes:
    data: bytes = rfc8785.dumps(dict(statement))
    return data


def _encode(value: Any, path: tuple[str, ...], splices: Mapping[tuple[str, ...], bytes]) -> bytes:
    """RFC 8785 of ``value`` (at ``path`` in the statement) with the values at ``splices``' paths taken as
    already encoded. RFC 8785 encodes an object as its members sorted by the UTF-16 code units of their
    names, each value in its own canonical form, so a value's encoding can be made once and reused."""
    done = splices.get(path)
    if done is not None:
        return done
    depth = len(path)
    if not isinstance(value, dict) or not any(len(p) > depth and p[:depth] == path for p in splices):
        data: bytes = rfc8785.dumps(value)
        return data
    members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
    return (
        b"{" + b",".join(rfc8785.dumps(k) + b":" + _encode(v, (*path, k), splices) for k, v in members) + b"}"
    )


def encode_statement(
    statement: Mapping[str, Any], entries: Sequence[ProvenEntry], claims_json: bytes | None = None
) -> bytes:
    """``encode_payload(statement)`` for a statement whose ``predicate.ledger.entries`` are ``entries``,
    reusing each entry's encoding (``ProvenEntry.encoded``) and, when given, ``claims_json`` as the
    encoding of ``predicate.cpu.claims`` (the caller's RFC 8785 of those very claims)."""
    listed = b"[" + b",".join(e.encoded for e in sorted(entries, key=lambda e: e.seq)) + b"]"
    splices: dict[tuple[str, ...], bytes] = {("predicate", "ledger", "entries"): listed}
    if claims_json is not None and statement["predicate"]["cpu"].get("claims") is not None:
        splices[("predicate", "cpu", "claims")] = claims_json
    return _encode(statement, (), splices)


def pae(payload: bytes) -> bytes:
    """What the DSSE signature covers: the pre-authentication encoding of the payload and its type."""
    data: bytes = dsse.Envelope(payload, PAYLOAD_TYPE, {}).pae()
    return data


def signed_envelope(payload: bytes, version: int, signature: bytes) -> bytes:
    """The DSSE envelope (JSON bytes) of ``payload`` with the provenance key's ``signature`` over its ``pae``."""
    envelope = dsse.Envelope(payload, PAYLOAD_TYPE, {})
    keyid = key_id(version)
    envelope.signatures[keyid] = Signature(keyid, signature.hex())
    return json.dumps(envelope.to_dict(), sort_keys=True, indent=1).encode()


def key_id(version: int) -> str:
    return f"{KEY_NAME}:v{version}"


class CallableSigner(Signer):
    """A securesystemslib ``Signer`` over a signing callable (OpenBao transit, or a local key in tests)."""

    def __init__(self, sign: Callable[[bytes], bytes], keyid: str, public: Key) -> None:
        self._sign = sign
        self._keyid = keyid
        self._public = public

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._keyid, self._sign(payload).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key, secrets_handler: Any = None) -> Signer:
        raise NotImplementedError("signs through a callable only")

    @property
    def public_key(self) -> Key:
        return self._public


def ed25519_key(keyid: str, raw_public: bytes) -> Key:
    return SSlibKey(keyid, "ed25519", "ed25519", {"public": raw_public.hex()})


def seal_statement(
    statement: Mapping[str, Any], sign: Callable[[bytes], bytes], version: int, raw_public: bytes
) -> bytes:
    """The DSSE envelope (JSON bytes) of ``statement``, signed by ``sign`` (Ed25519 over DSSE's PAE)."""
    envelope = dsse.Envelope(encode_payload(statement), PAYLOAD_TYPE, {})
    keyid = key_id(version)
    envelope.sign(CallableSigner(sign, keyid, ed25519_key(keyid, raw_public)))
    return json.dumps(envelope.to_dict(), sort_keys=True, indent=1).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
