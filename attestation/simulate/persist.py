"""Saving a ``SimulatedPki`` so that another process can mint evidence under the same test roots.

``dump_pki`` serialises the roots and CAs (AMD ARK + ASK/ASVK per product made so far, the Intel root,
PCK Platform CA and TCB Signing CA: private keys as unencrypted PKCS#8 PEM, certificates as DER) and
the PKI's ``now``; ``load_pki`` rebuilds a ``SimulatedPki`` from those bytes. Leaf keys (VCEK/VLEK,
PCK, the quote attestation key) are not saved: a node makes its own, and the certificates that
endorse them travel with its evidence, chained to the saved CAs.

These are test keys: the production trust profile refuses every root they sign
(``TEST_ROOT_IN_PRODUCTION``). Pure (bytes in, bytes out); the caller writes the file (0600).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.simulate._certs import Issuer, SigningKey
from attestation.simulate.amd import PRODUCTS, AmdProductCa
from attestation.simulate.intel import IntelCa
from attestation.simulate.pki import SimulatedPki

FORMAT = "sovereign-simulated-pki/1"


class PkiFileError(ValueError):
    """The bytes are not a saved simulator PKI (or one this version cannot read)."""


def _key_pem(key: SigningKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _issuer_doc(issuer: Issuer, der: bytes) -> dict[str, str]:
    return {"key": _key_pem(issuer.key), "cert": base64.b64encode(der).decode()}


def dump_pki(pki: SimulatedPki) -> bytes:
    """The PKI's roots and CAs (genuine hierarchies only; the fault-injection 'foreign' ones are not
    saved). Makes every product's ARK and the Intel CA first, so the saved trust profile is complete."""
    pki.trust_store()
    amd: dict[str, Any] = {}
    for product in PRODUCTS:
        ca = pki.amd_ca(product)
        amd[product] = {
            "ark": _issuer_doc(ca.ark, ca.ark_der),
            "signers": {
                ("vlek" if vlek else "ask"): _issuer_doc(issuer, der)
                for vlek, (issuer, der) in ca._signers.items()
            },
        }
    intel = pki.intel_ca()
    doc = {
        "format": FORMAT,
        "now": pki.now.isoformat(),
        "amd": amd,
        "intel": {
            "root": _issuer_doc(intel.root, intel.root_der),
            "platform": _issuer_doc(intel.platform, intel.platform_der),
            "tcb_signing": _issuer_doc(intel.tcb_signing, intel.tcb_signing_der),
        },
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def _issuer(doc: Any, *, rsa_key: bool) -> tuple[Issuer, bytes]:
    der = base64.b64decode(doc["cert"], validate=True)
    cert = x509.load_der_x509_certificate(der)
    key = serialization.load_pem_private_key(doc["key"].encode(), password=None)
    wanted = rsa.RSAPrivateKey if rsa_key else ec.EllipticCurvePrivateKey
    if not isinstance(key, wanted):
        raise PkiFileError(f"{cert.subject.rfc4514_string()}: unexpected key type {type(key).__name__}")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise PkiFileError(f"{cert.subject.rfc4514_string()}: the private key does not match the certificate")
    return Issuer(cert.subject, key), der


def load_pki(data: bytes) -> SimulatedPki:
    """Rebuild the PKI ``dump_pki`` saved; ``PkiFileError`` for anything else."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PkiFileError(f"not a saved simulator PKI (format {FORMAT!r} expected)")
        now = datetime.fromisoformat(doc["now"])
        pki = SimulatedPki(now)
        for product in PRODUCTS:
            entry = doc["amd"][product]
            ark, ark_der = _issuer(entry["ark"], rsa_key=True)
            ca = AmdProductCa(product, now, ark, ark_der)
            for name, signer in entry["signers"].items():
                if name not in ("ask", "vlek"):
                    raise PkiFileError(f"unknown AMD signer {name!r}")
                ca._signers[name == "vlek"] = _issuer(signer, rsa_key=True)
            pki._amd_cas[(product, False)] = ca
        intel = doc["intel"]
        root, root_der = _issuer(intel["root"], rsa_key=False)
        platform, platform_der = _issuer(intel["platform"], rsa_key=False)
        tcb_signing, tcb_signing_der = _issuer(intel["tcb_signing"], rsa_key=False)
        pki._intel_cas[False] = IntelCa(
            now, root, root_der, platform, platform_der, tcb_signing, tcb_signing_der
        )
        return pki
    except PkiFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise PkiFileError(f"not a readable saved simulator PKI ({type(exc).__name__})") from None
