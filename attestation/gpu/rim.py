"""NVIDIA reference integrity manifests (RIMs): SWID tags with an enveloped XML signature (pure).

A RIM is an ISO/IEC 19770-2 SoftwareIdentity whose Payload lists one ``Resource type="Measurement"`` per
measurement index (0-based): ``active``, ``alternatives`` N, ``Hash0``..``Hash{N-1}`` (SHA-384 hex, in the
xmlenc#sha384 namespace) and ``size``. The signature is ecdsa-sha384 over inclusive C14N 1.1 with one
``Reference URI=""``; ``KeyInfo/X509Data`` carries the signer chain, leaf first.

Order of checks, each with its code: the XML and the signature (signxml, with the leaf from X509Data[0];
``GPU_RIM_INVALID``), then the chain to the pinned NVIDIA RIM root (``GPU_RIM_UNTRUSTED``) and every
certificate's window at ``now`` (``GPU_RIM_EXPIRED``, unless the caller explicitly accepts expired RIM
certificates). The measurements are read from the element signxml returns as signed, never from the
input document, so nothing outside the signature can add or change a golden value.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from attestation.errors import X509_PARSE_ERRORS, Code, SignatureInvalid
from attestation.gpu.chain import Chain, ChainCache, verify_chain
from attestation.trust import TrustStore

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
MAX_RIM_BYTES = 1 << 20
MAX_ALTERNATIVES = 16
MAX_INDEX = 255

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=False)


@dataclass(frozen=True)
class GoldenMeasurement:
    index: int  # 0-based; the report's measurement block index is index + 1
    alternatives: tuple[bytes, ...]
    size: int
    name: str


@dataclass(frozen=True)
class Rim:
    """A RIM whose signature and chain verified."""

    tag_id: str
    product: str
    version: str  # Meta colloquialVersion: driver version or VBIOS version (96.00.9F.00.01)
    measurements: Mapping[int, GoldenMeasurement]  # active ones only, by 0-based index
    signer: str
    valid_until: datetime  # earliest notAfter in the signer chain
    cert_expired: bool  # True only when the caller accepted an expired chain
    chain: Chain
    tag_version: int = 0  # SWID tagVersion: a re-issued RIM for the same version counts up


@dataclass(frozen=True)
class SignedRim:
    """What a RIM's signature covers, checked with the leaf it carries; its chain is not judged yet."""

    ders: tuple[bytes, ...]
    tag_id: str
    product: str
    version: str
    measurements: Mapping[int, GoldenMeasurement]
    signer: str
    tag_version: int = 0


class RimCache:
    """Signature checks remembered per RIM content (the bytes are the key); chain pin and windows are
    re-checked per call."""

    def __init__(self, size: int = 256) -> None:
        self.chains = ChainCache(size)
        self._size = size
        self._lock = threading.Lock()
        self._items: dict[bytes, SignedRim] = {}

    def _get(self, key: bytes) -> SignedRim | None:
        with self._lock:
            return self._items.get(key)

    def _put(self, key: bytes, value: SignedRim) -> None:
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value


def _invalid(message: str) -> SignatureInvalid:
    return SignatureInvalid(message, code=Code.GPU_RIM_INVALID)


def _signer_chain(root: etree._Element) -> list[bytes]:
    signatures = root.findall(f"{{{DSIG_NS}}}Signature")
    if len(signatures) != 1:
        raise _invalid(f"the RIM has {len(signatures)} enveloped signatures; exactly one is required")
    certs = signatures[0].findall(f"{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/{{{DSIG_NS}}}X509Certificate")
    if not certs:
        raise _invalid("the RIM signature carries no X509Data certificate chain")
    try:
        return [base64.b64decode("".join((c.text or "").split()), validate=True) for c in certs]
    except (binascii.Error, ValueError) as exc:
        raise _invalid("a RIM X509Certificate is not base64") from exc


def _verify_signature(data: bytes, leaf_der: bytes) -> etree._Element:
    try:
        leaf = x509.load_der_x509_certificate(leaf_der)
        # signxml checks the leaf's window at verification_time; windows are judged by verify_chain, at now.
        config = SignatureConfiguration(
            location="./",
            signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
            digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
            expect_references=1,
            verification_time=leaf.not_valid_before_utc,
        )
        result = XMLVerifier().verify(data, x509_cert=leaf, expect_config=config)
    except (SignXMLException, etree.LxmlError, *X509_PARSE_ERRORS) as exc:
        raise _invalid(f"RIM XML signature does not verify: {type(exc).__name__}: {exc}") from exc
    signed = getattr(result, "signed_xml", None)
    if not isinstance(signed, etree._Element):
        raise _invalid("RIM signature did not yield the signed document")
    return signed


def _int(attr: str | None, what: str) -> int:
    if attr is None or not attr.isdigit() or len(attr) > 6:
        raise _invalid(f"RIM {what} is not a small decimal number: {attr!r}")
    return int(attr)


def _tag_version(attr: str | None) -> int:
    # Only ranks re-issued RIMs in the collateral store; an odd value ranks lowest rather than refusing.
    return int(attr) if attr is not None and attr.isascii() and attr.isdigit() and len(attr) <= 6 else 0


def _measurements(signed: etree._Element) -> dict[int, GoldenMeasurement]:
    payloads = signed.findall(f"{{{SWID_NS}}}Payload")
    if len(payloads) != 1:
        raise _invalid(f"the signed RIM has {len(payloads)} Payload elements; exactly one is required")
    out: dict[int, GoldenMeasurement] = {}
    seen: set[int] = set()
    for res in payloads[0].findall(f"{{{SWID_NS}}}Resource"):
        if res.get("type") != "Measurement":
            continue
        index = _int(res.get("index"), "measurement index")
        if index > MAX_INDEX or index in seen:
            raise _invalid(f"RIM measurement index {index} is out of range or repeated")
        seen.add(index)
        active = res.get("active")
        if active not in ("True", "False"):
            raise _invalid(f"RIM measurement {index} has active={active!r}")
        size = _int(res.get("size"), f"measurement {index} size")
        count = _int(res.get("alternatives"), f"measurement {index} alternatives")
        if not 1 <= count <= MAX_ALTERNATIVES:
            raise _invalid(f"RIM measurement {index} lists {count} alternatives")
        values = []
        for k in range(count):
            text = res.get(f"{{{SHA384_NS}}}Hash{k}")
            if text is None or len(text) != 2 * size:
                raise _invalid(f"RIM measurement {index} Hash{k} is missing or not {size} bytes")
            try:
                values.append(bytes.fromhex(text))
            except ValueError as exc:
                raise _invalid(f"RIM measurement {index} Hash{k} is not hex") from exc
        if active == "True":
            out[index] = GoldenMeasurement(index, tuple(values), size, res.get("name") or "")
    if not seen:
        raise _invalid("the signed RIM lists no measurements")
    return out


def _verify_signed(data: bytes) -> SignedRim:
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except (etree.LxmlError, ValueError) as exc:
        raise _invalid(f"the RIM is not well-formed XML: {exc}") from exc
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise _invalid(f"the RIM root element is {root.tag!r}, not a SWID SoftwareIdentity")
    ders = _signer_chain(root)
    signed = _verify_signature(data, ders[0])
    metas = signed.findall(f"{{{SWID_NS}}}Meta")
    if len(metas) != 1:
        raise _invalid(f"the signed RIM has {len(metas)} Meta elements; exactly one is required")
    leaf = x509.load_der_x509_certificate(ders[0])
    cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return SignedRim(
        signer=str(cn[0].value) if cn else leaf.subject.rfc4514_string(),
        ders=tuple(ders),
        tag_id=signed.get("tagId") or "",
        product=metas[0].get("product") or "",
        version=metas[0].get("colloquialVersion") or "",
        measurements=MappingProxyType(_measurements(signed)),
        tag_version=_tag_version(signed.get("tagVersion")),
    )


def read_signed_rim(data: bytes) -> SignedRim:
    """The signed content of a RIM (signature checked with its own leaf; chain, pin and windows are
    ``verify_rim``'s). For indexing stored RIMs, never for trusting one."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_RIM_BYTES:
        raise _invalid(f"a RIM must be bytes of at most {MAX_RIM_BYTES}")
    return _verify_signed(bytes(data))


def verify_rim(
    data: bytes,
    *,
    trust: TrustStore,
    now: datetime,
    cache: RimCache | None = None,
    accept_expired_certificates: bool = False,
) -> Rim:
    """Verify one RIM; raise ``AttestationError`` with a GPU_RIM_* code on any failure."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_RIM_BYTES:
        raise _invalid(f"a RIM must be bytes of at most {MAX_RIM_BYTES}")
    data = bytes(data)
    key = data  # content-addressed by the bytes themselves (equality, not identity)
    signed_rim = cache._get(key) if cache else None
    if signed_rim is None:
        signed_rim = _verify_signed(data)
        if cache:
            cache._put(key, signed_rim)
    chain = verify_chain(
        signed_rim.ders,
        check_root=trust.check_nvidia_rim_root,
        now=now,
        code=Code.GPU_RIM_UNTRUSTED,
        expired_code=Code.GPU_RIM_EXPIRED,
        what="RIM signer",
        cache=cache.chains if cache else None,
        allow_expired=accept_expired_certificates,
    )
    return Rim(
        tag_id=signed_rim.tag_id,
        product=signed_rim.product,
        version=signed_rim.version,
        measurements=signed_rim.measurements,
        signer=signed_rim.signer,
        valid_until=chain.not_after,
        cert_expired=not chain.not_before <= now <= chain.not_after,
        chain=chain,
        tag_version=signed_rim.tag_version,
    )
