"""Saving a ``GpuSimulator`` so that node processes mint GPU evidence under the roots a control plane pins.

``dump_gpu_simulator`` keeps the device identity root, the RIM root, the per-chip identity and provisioner
CAs and the RIM CAs (keys as unencrypted PKCS#8 PEM, certificates as DER) and the simulator's ``now``;
``load_gpu_simulator`` rebuilds it. ``gpu_collateral`` is what a control plane needs to verify any GPU such
a simulator mints with the default driver and VBIOS: the two RIMs, OCSP answers for the CAs and RIM signers,
and each provisioner CA's CRL (which answers for every per-GPU BROM certificate).

Test keys: the production trust profile refuses these roots (``TEST_ROOT_IN_PRODUCTION``). Pure.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.collateral import CollateralItem, ItemKind
from attestation.simulate.gpu import GpuSimulator, _Ca
from attestation.trust import TrustStore

FORMAT = "sovereign-simulated-gpu-pki/1"
CHIPS = ("GH100", "GB100")


class GpuPkiFileError(ValueError):
    """The bytes are not a saved GPU simulator (or one this version cannot read)."""


def _ca_doc(ca: _Ca) -> dict[str, str]:
    key = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert = ca.cert.public_bytes(serialization.Encoding.DER)
    return {"key": key.decode(), "cert": base64.b64encode(cert).decode()}


def _ca(doc: Any) -> _Ca:
    cert = x509.load_der_x509_certificate(base64.b64decode(doc["cert"], validate=True))
    key = serialization.load_pem_private_key(doc["key"].encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise GpuPkiFileError(f"{cert.subject.rfc4514_string()}: not an EC key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise GpuPkiFileError(f"{cert.subject.rfc4514_string()}: the key does not match the certificate")
    return _Ca(cert, key)


def dump_gpu_simulator(sim: GpuSimulator) -> bytes:
    """The genuine hierarchies (the fault-injection 'foreign' roots are not saved)."""
    for chip in CHIPS:
        sim._device_cas(chip, False)
    sim._rim_chain(foreign=False, expired=False)
    doc = {
        "format": FORMAT,
        "now": sim.now.isoformat(),
        "device_root": _ca_doc(sim.device_root),
        "rim_root": _ca_doc(sim.rim_root),
        "chips": {
            chip: {"identity": _ca_doc(ids[0]), "provisioner": _ca_doc(ids[1])}
            for (chip, foreign), ids in sim._identity.items()
            if not foreign
        },
        "rim_cas": {"ca": _ca_doc(sim._rim_cas[False][0]), "l3": _ca_doc(sim._rim_cas[False][1])},
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def load_gpu_simulator(data: bytes) -> GpuSimulator:
    """Rebuild what ``dump_gpu_simulator`` saved; ``GpuPkiFileError`` for anything else."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise GpuPkiFileError(f"not a saved GPU simulator ({FORMAT!r} expected)")
        sim = GpuSimulator(datetime.fromisoformat(doc["now"]))
        sim.device_root = _ca(doc["device_root"])
        sim.rim_root = _ca(doc["rim_root"])
        for chip, cas in doc["chips"].items():
            if chip not in CHIPS:
                raise GpuPkiFileError(f"unknown GPU chip {chip!r}")
            sim._identity[(chip, False)] = (_ca(cas["identity"]), _ca(cas["provisioner"]))
        sim._rim_cas[False] = (_ca(doc["rim_cas"]["ca"]), _ca(doc["rim_cas"]["l3"]))
        return sim
    except GpuPkiFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise GpuPkiFileError(f"not a readable saved GPU simulator ({type(exc).__name__})") from None


@dataclass(frozen=True)
class GpuCollateralFiles:
    """RIMs (XML), OCSP responses and CRLs (DER) for a control plane's GPU collateral, and the CA
    certificates (DER) of the device chains, which the collateral store needs to check the OCSP answers
    and CRLs on import."""

    rims: tuple[bytes, ...]
    ocsp_responses: tuple[bytes, ...]
    crls: tuple[bytes, ...]
    certificates: tuple[bytes, ...] = ()

    def items(self, source: str = "simulator") -> list[tuple[CollateralItem, str]]:
        """As collateral store items (``CollateralStore.import_items``), certificates first."""
        kinds = (
            (ItemKind.CERTIFICATE, self.certificates),
            (ItemKind.GPU_RIM, self.rims),
            (ItemKind.OCSP_RESPONSE, self.ocsp_responses),
            (ItemKind.CRL, self.crls),
        )
        return [(CollateralItem(kind, data), source) for kind, values in kinds for data in values]


def gpu_collateral(sim: GpuSimulator) -> GpuCollateralFiles:
    """Collateral for every GPU the simulator mints with the default driver and VBIOS (both architectures)."""
    rims: list[bytes] = []
    responses: list[bytes] = []
    certificates: dict[bytes, None] = {}
    for architecture in ("HOPPER", "BLACKWELL"):
        minted = sim.mint(nonce=os.urandom(32), architecture=architecture, seed=f"collateral-{architecture}")
        responses += minted.ocsp_responses
        certificates.update(dict.fromkeys(minted.evidence.chain[1:]))
        if not rims:
            rims = [minted.driver_rim, minted.vbios_rim]
    crls = tuple(sim.provisioner_crl(chip=chip) for chip in CHIPS)
    return GpuCollateralFiles(tuple(rims), tuple(responses), crls, tuple(certificates))


def pin_gpu_roots(trust: TrustStore, sim: GpuSimulator) -> TrustStore:
    """``trust`` that also pins the simulator's NVIDIA device and RIM roots."""
    gpu = sim.trust_store()
    return dataclasses.replace(
        trust,
        nvidia_device_roots=trust.nvidia_device_roots | gpu.nvidia_device_roots,
        nvidia_rim_roots=trust.nvidia_rim_roots | gpu.nvidia_rim_roots,
    )
