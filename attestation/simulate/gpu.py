"""Simulated NVIDIA GPUs: SPDM 1.1 measurement reports, device chains, RIMs and OCSP responses.

``GpuSimulator(now)`` makes a test NVIDIA PKI (device identity root -> GH100/GB100 identity CA ->
provisioner CA -> per-GPU BROM certificate -> per-boot FMC leaf with the FWID) and a RIM PKI (CoRIM root ->
reference-value CA -> L3 -> L4 signer), every name carrying ``SIMULATOR_ORGANIZATION`` so the production
profile refuses them. ``mint(...)`` returns one GPU's evidence, its driver and VBIOS RIMs and the OCSP
responses for both chains, in NVIDIA's formats; each ``GpuFault`` knob makes exactly one check fail.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from attestation.gpu import spdm
from attestation.gpu.evidence import GpuEvidence
from attestation.gpu.revocation import GpuCollateral
from attestation.simulate import _der
from attestation.simulate.gpu_rim import build_rim
from attestation.trust import SIMULATOR_ORGANIZATION, TrustStore, fingerprint

TCG_DICE_TCBINFO = "2.23.133.5.4.1"
TCG_DICE_UEID = "2.23.133.5.4.4"
NVIDIA_DEVICE_NAME = "1.3.6.1.4.1.412.274.1"
SHA384_OID = "2.16.840.1.101.3.4.2.2"
DRIVER_INDEXES = (7, *range(21, 41))  # as NVIDIA's GH100 driver RIMs
VBIOS_INDEXES = (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12)
ALTERNATIVE_INDEX = 4  # listed with two alternatives; the report carries the second


class GpuFault(StrEnum):
    MALFORMED = "malformed"  # GPU_REPORT_MALFORMED: opaque length runs past the response
    BAD_SIGNATURE = "bad-signature"  # GPU_SIGNATURE_INVALID
    FOREIGN_CHAIN = "foreign-chain"  # GPU_CHAIN_UNTRUSTED: same-named, unpinned device root
    EXPIRED_CERT = "expired-cert"  # GPU_CERT_EXPIRED: the FMC leaf expired a day before now
    FWID_MISMATCH = "fwid-mismatch"  # GPU_FWID_MISMATCH: report FWID differs from the leaf's
    NONCE_MISMATCH = "nonce-mismatch"  # GPU_NONCE_MISMATCH: the report answers another nonce
    REVOKED = "revoked"  # GPU_REVOKED: OCSP says the BROM certificate is revoked
    MISSING_COLLATERAL = "missing-collateral"  # GPU_COLLATERAL_MISSING: no answer for the BROM certificate
    EXPIRED_COLLATERAL = "expired-collateral"  # GPU_COLLATERAL_EXPIRED: every OCSP nextUpdate is past
    RIM_INVALID = "rim-invalid"  # GPU_RIM_INVALID: the VBIOS RIM edited after signing
    RIM_UNTRUSTED = "rim-untrusted"  # GPU_RIM_UNTRUSTED: the VBIOS RIM signed under an unpinned root
    RIM_EXPIRED = "rim-expired"  # GPU_RIM_EXPIRED: the VBIOS RIM's L4 signer expired
    RIM_INDEX_CONFLICT = "rim-index-conflict"  # GPU_RIM_INDEX_CONFLICT: both RIMs claim index 7
    MEASUREMENT_MISMATCH = "measurement-mismatch"  # GPU_MEASUREMENT_MISMATCH: VBIOS differs from its RIM


@dataclass(frozen=True)
class _Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class MintedGpu:
    evidence: GpuEvidence
    nonce: bytes
    driver_rim: bytes
    vbios_rim: bytes
    ocsp_responses: tuple[bytes, ...]
    ueid: str
    driver_version: str
    vbios_version: str

    def collateral(self) -> GpuCollateral:
        return GpuCollateral(ocsp_responses=self.ocsp_responses)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATOR_ORGANIZATION),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: _Ca | None, *, not_before: datetime,
    not_after: datetime, ca: bool, extensions: tuple[x509.ExtensionType, ...] = (),
) -> _Ca:  # fmt: skip
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    builder = builder.add_extension(usage, critical=True)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return _Ca(builder.sign(signer_key, hashes.SHA384()), key)


def _fwid_extension(
    fwid: bytes, leaf_key: ec.EllipticCurvePrivateKey, architecture: str
) -> x509.ExtensionType:
    fwid_seq = _der.sequence(_der.oid(SHA384_OID), _der.octet_string(fwid))
    if architecture == "HOPPER":  # NVIDIA's shape: SEQUENCE { INTEGER 1, SPKI, FWID }
        spki = leaf_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        value = _der.sequence(_der.integer(1), spki, fwid_seq)
    else:  # TCG DICE TcbInfo: vendor [0], model [1], fwids [6]
        value = _der.sequence(_der.tlv(0x80, b"NVIDIA"), _der.tlv(0x81, b"GB100"), _der.tlv(0xA6, fwid_seq))
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(TCG_DICE_TCBINFO), value)


class GpuSimulator:
    """Test NVIDIA device and RIM PKIs anchored at ``now``; ``mint`` makes one GPU's evidence."""

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware (UTC)")
        self.now = now
        start, end = now - timedelta(days=365), now + timedelta(days=3650)
        self._window = (start, end)
        self.device_root = _issue(
            "NVIDIA Device Identity CA", _key(), None, not_before=start, not_after=end, ca=True
        )
        self._foreign_root = _issue(
            "NVIDIA Device Identity CA", _key(), None, not_before=start, not_after=end, ca=True
        )
        self.rim_root = _issue(
            "NVIDIA CoRIM signing Root CA", _key(), None, not_before=start, not_after=end, ca=True
        )
        self._foreign_rim_root = _issue(
            "NVIDIA CoRIM signing Root CA", _key(), None, not_before=start, not_after=end, ca=True
        )
        self._identity: dict[tuple[str, bool], tuple[_Ca, _Ca]] = {}
        self._rim_cas: dict[bool, tuple[_Ca, _Ca]] = {}
        self._serial = 0

    def __repr__(self) -> str:
        return f"GpuSimulator(now={self.now.isoformat()})"

    def trust_store(self) -> TrustStore:
        """Pins exactly this simulator's device and RIM roots (and nothing else)."""
        return TrustStore(
            name="simulation",
            amd_arks={},
            intel_roots=frozenset(),
            allow_simulated=True,
            nvidia_device_roots=frozenset(
                {fingerprint(self.device_root.cert.public_bytes(serialization.Encoding.DER))}
            ),
            nvidia_rim_roots=frozenset(
                {fingerprint(self.rim_root.cert.public_bytes(serialization.Encoding.DER))}
            ),
        )

    def _device_cas(self, chip: str, foreign: bool) -> tuple[_Ca, _Ca]:
        key = (chip, foreign)
        if key not in self._identity:
            root = self._foreign_root if foreign else self.device_root
            start, end = self._window
            identity = _issue(
                f"NVIDIA {chip} Identity", _key(), root, not_before=start, not_after=end, ca=True
            )
            prov = _issue(
                f"NVIDIA {chip} Provisioner ICA 1", _key(), identity, not_before=start, not_after=end, ca=True
            )
            self._identity[key] = (identity, prov)
        return self._identity[key]

    def _rim_chain(self, foreign: bool, expired: bool) -> tuple[_Ca, list[x509.Certificate]]:
        if foreign not in self._rim_cas:
            root = self._foreign_rim_root if foreign else self.rim_root
            start, end = self._window
            ca = _issue(
                "NVIDIA Reference Value GH100 CA", _key(), root, not_before=start, not_after=end, ca=True
            )
            l3 = _issue(
                "NVIDIA Reference Value L3 GH100 001", _key(), ca, not_before=start, not_after=end, ca=True
            )
            self._rim_cas[foreign] = (ca, l3)
        ca, l3 = self._rim_cas[foreign]
        start, end = (
            (self.now - timedelta(days=400), self.now - timedelta(days=1)) if expired else self._window
        )
        signer = _issue("HCC RIM L4 Signer", _key(), l3, not_before=start, not_after=end, ca=False)
        root = self._foreign_rim_root if foreign else self.rim_root
        return signer, [signer.cert, l3.cert, ca.cert, root.cert]

    def mint(
        self,
        *,
        nonce: bytes,
        seed: str = "gpu-0",
        architecture: str = "HOPPER",
        driver_version: str = "550.90.07",
        vbios: bytes = bytes.fromhex("009f009601000000"),
        faults: frozenset[GpuFault] | set[GpuFault] = frozenset(),
        measurements: Mapping[int, bytes] | None = None,
    ) -> MintedGpu:
        """One GPU's evidence and RIMs; ``measurements`` (RIM index -> 48-byte digest) overrides the derived
        values at those indexes, so a report can carry another RIM's golden values (report block i + 1)."""
        if len(nonce) != spdm.NONCE_SIZE:
            raise ValueError("the GPU nonce is 32 bytes")
        if measurements is not None and any(
            i not in range(64) or len(v) != 48 for i, v in measurements.items()
        ):
            raise ValueError("measurement overrides are RIM indexes 0..63 with 48-byte SHA-384 digests")
        faults = frozenset(GpuFault(f) for f in faults)
        chip = "GH100" if architecture == "HOPPER" else "GB100"
        identity, prov = self._device_cas(chip, GpuFault.FOREIGN_CHAIN in faults)
        start, end = self._window
        device_id = hashlib.sha256(f"{seed}/id".encode()).hexdigest()[:16].upper()
        brom = _issue(f"{chip} A01 GSP BROM", _key(), prov, not_before=start, not_after=end, ca=True)
        fwid = hashlib.sha384(f"fmc/{vbios.hex()}".encode()).digest()  # same firmware, same FWID
        leaf_key = _key()
        name = f"NVIDIA:{chip}:{device_id}"
        extensions: list[x509.ExtensionType] = [
            x509.SubjectAlternativeName(
                [x509.OtherName(x509.ObjectIdentifier(NVIDIA_DEVICE_NAME), _der.tlv(0x0C, name.encode()))]
            ),
            _fwid_extension(fwid, leaf_key, architecture),
        ]
        ueid = name
        if architecture != "HOPPER":
            raw_ueid = hashlib.sha256(f"{seed}/ueid".encode()).digest()[:17]
            extensions.append(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier(TCG_DICE_UEID), _der.sequence(_der.octet_string(raw_ueid))
                )
            )
            ueid = raw_ueid.hex()
        leaf_window = (
            (self.now - timedelta(days=30), self.now - timedelta(days=1))
            if GpuFault.EXPIRED_CERT in faults
            else (start, end)
        )
        leaf = _issue(
            f"{chip} A01 GSP FMC LF", leaf_key, brom, not_before=leaf_window[0], not_after=leaf_window[1],
            ca=False, extensions=tuple(extensions),
        )  # fmt: skip
        root = self._foreign_root if GpuFault.FOREIGN_CHAIN in faults else self.device_root
        chain = [leaf.cert, brom.cert, prov.cert, identity.cert, root.cert]

        values = {
            i: hashlib.sha384(f"m{i}/{driver_version}/{vbios.hex()}".encode()).digest() for i in range(64)
        }
        values.update(measurements or {})
        report = self._report(
            nonce=bytes(32) if GpuFault.NONCE_MISMATCH in faults else nonce,
            measurements=values,
            opaque=self._opaque(
                driver_version,
                vbios,
                fwid if GpuFault.FWID_MISMATCH not in faults else hashlib.sha384(b"other").digest(),
            ),
            key=leaf_key,
            faults=faults,
        )
        driver_rim, vbios_rim, rim_chains = self._rims(values, driver_version, vbios, faults)
        ocsp_responses = self._ocsp([leaf.cert, brom.cert, prov.cert, identity.cert, root.cert],
                                    [leaf, brom, prov, identity, root], faults)  # fmt: skip
        for cas in rim_chains:
            ocsp_responses += self._ocsp([c.cert for c in cas], cas, frozenset())
        der_chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
        return MintedGpu(
            evidence=GpuEvidence(report, der_chain, architecture),
            nonce=nonce,
            driver_rim=driver_rim,
            vbios_rim=vbios_rim,
            ocsp_responses=ocsp_responses,
            ueid=ueid,
            driver_version=driver_version,
            vbios_version=".".join(f"{b:02X}" for b in (vbios[3], vbios[2], vbios[1], vbios[0], vbios[4])),
        )

    @staticmethod
    def _opaque(driver_version: str, vbios: bytes, fwid: bytes) -> list[tuple[int, bytes]]:
        return [
            (spdm.OPAQUE_VBIOS_VERSION, vbios),
            (spdm.OPAQUE_CHIP_SKU, b"882\x00"),
            (spdm.OPAQUE_PROJECT, b"1010\x00"),
            (spdm.OPAQUE_PROJECT_SKU, b"0200\x00"),
            (spdm.OPAQUE_DRIVER_VERSION, driver_version.encode() + b"\x00"),
            (spdm.OPAQUE_NVDEC0_STATUS, bytes([spdm.STATUS_DISABLED])),
            (spdm.OPAQUE_FWID, fwid),
            (spdm.OPAQUE_PROTECTED_PCIE_STATUS, bytes([spdm.STATUS_DISABLED])),
            (spdm.OPAQUE_OPAQUE_DATA_VERSION, b"\x01\x00"),
        ]

    def _report(
        self, *, nonce: bytes, measurements: dict[int, bytes], opaque: list[tuple[int, bytes]],
        key: ec.EllipticCurvePrivateKey, faults: frozenset[GpuFault],
    ) -> bytes:  # fmt: skip
        request = (
            bytes(
                [
                    spdm.SPDM_VERSION_1_1,
                    spdm.GET_MEASUREMENTS,
                    spdm.SIGNATURE_REQUESTED,
                    spdm.ALL_MEASUREMENTS,
                ]
            )
            + nonce
            + b"\x00"
        )
        record = b"".join(
            bytes([i + 1, spdm.DMTF_MEASUREMENT_SPECIFICATION])
            + struct.pack("<H", 51)
            + b"\x01"
            + struct.pack("<H", 48)
            + v
            for i, v in sorted(measurements.items())
        )
        opaque_bytes = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in opaque)
        opaque_length = len(opaque_bytes) + (200 if GpuFault.MALFORMED in faults else 0)
        response = (
            bytes([spdm.SPDM_VERSION_1_1, spdm.MEASUREMENTS, 0, 0, len(measurements)])
            + len(record).to_bytes(3, "little") + record
            + hashlib.sha256(nonce + b"responder").digest()
            + struct.pack("<H", opaque_length) + opaque_bytes
        )  # fmt: skip
        signed = request + response
        r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        if GpuFault.BAD_SIGNATURE in faults:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        return signed + signature

    def _rims(
        self, measurements: dict[int, bytes], driver_version: str, vbios: bytes, faults: frozenset[GpuFault]
    ) -> tuple[bytes, bytes, list[list[_Ca]]]:
        def golden(indexes: tuple[int, ...]) -> dict[int, list[bytes]]:
            out = {i: [measurements[i]] for i in indexes}  # RIM index i is report block i + 1
            if ALTERNATIVE_INDEX in out:
                out[ALTERNATIVE_INDEX] = [
                    hashlib.sha384(b"older build").digest(),
                    measurements[ALTERNATIVE_INDEX],
                ]
            return out

        driver_golden = golden(DRIVER_INDEXES)
        vbios_golden = golden(VBIOS_INDEXES)
        if GpuFault.MEASUREMENT_MISMATCH in faults:
            vbios_golden[1] = [hashlib.sha384(b"another VBIOS").digest()]
        if GpuFault.RIM_INDEX_CONFLICT in faults:
            vbios_golden[7] = [measurements[7]]
        vbios_text = ".".join(f"{b:02X}" for b in (vbios[3], vbios[2], vbios[1], vbios[0], vbios[4]))
        driver_signer, driver_chain = self._rim_chain(foreign=False, expired=False)
        vbios_signer, vbios_chain = self._rim_chain(
            foreign=GpuFault.RIM_UNTRUSTED in faults, expired=GpuFault.RIM_EXPIRED in faults
        )
        rim_chains = [
            self._rim_cas_for(driver_signer, foreign=False),
            self._rim_cas_for(vbios_signer, foreign=GpuFault.RIM_UNTRUSTED in faults),
        ]
        driver = build_rim(
            product="GH100",
            version=driver_version,
            golden=driver_golden,
            signer_key=driver_signer.key,
            chain=driver_chain,
        )
        vbios_rim = build_rim(
            product="GH100",
            version=vbios_text,
            golden=vbios_golden,
            signer_key=vbios_signer.key,
            chain=vbios_chain,
        )
        if GpuFault.RIM_INVALID in faults:
            digest = vbios_golden[0][0].hex().encode()
            vbios_rim = vbios_rim.replace(digest, digest[:-1] + (b"0" if digest[-1:] != b"0" else b"1"), 1)
        return driver, vbios_rim, rim_chains

    def _rim_cas_for(self, signer: _Ca, *, foreign: bool) -> list[_Ca]:
        ca, l3 = self._rim_cas[foreign]
        return [signer, l3, ca, self._foreign_rim_root if foreign else self.rim_root]

    def _ocsp(
        self, certs: list[x509.Certificate], cas: list[_Ca], faults: frozenset[GpuFault]
    ) -> tuple[bytes, ...]:
        """One OCSP response per certificate except the root, signed by its issuer."""
        out = []
        this_update = self.now - timedelta(days=1)
        next_update = (
            self.now - timedelta(hours=1)
            if GpuFault.EXPIRED_COLLATERAL in faults
            else self.now + timedelta(days=7)
        )
        for i in range(len(certs) - 1):
            if i == 1 and GpuFault.MISSING_COLLATERAL in faults:
                continue
            revoked = i == 1 and GpuFault.REVOKED in faults
            builder = ocsp.OCSPResponseBuilder().add_response(
                cert=certs[i], issuer=certs[i + 1], algorithm=hashes.SHA384(),
                cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
                this_update=this_update, next_update=next_update,
                revocation_time=this_update if revoked else None,
                revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
            ).responder_id(ocsp.OCSPResponderEncoding.HASH, certs[i + 1])  # fmt: skip
            response = builder.sign(cas[i + 1].key, hashes.SHA384())
            out.append(response.public_bytes(serialization.Encoding.DER))
        return tuple(out)

    def provisioner_crl(
        self, *, revoked: tuple[x509.Certificate, ...] = (), chip: str = "GH100", stale: bool = False
    ) -> bytes:
        """A CRL of the provisioner CA (the issuer of every BROM certificate), DER."""
        _identity, prov = self._device_cas(chip, False)
        this_update = self.now - timedelta(days=10 if stale else 1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(prov.cert.subject)
            .last_update(this_update)
            .next_update(this_update + timedelta(days=5 if stale else 30))
        )
        for cert in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(this_update)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(prov.key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)
