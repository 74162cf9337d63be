"""Test RIMs in NVIDIA's format: SWID tags with golden SHA-384 measurements, signed with signxml.

The signature has NVIDIA's shape (enveloped, ecdsa-sha384, sha384 digests, inclusive C14N 1.1,
``KeyInfo/X509Data`` with the signer chain, leaf first); the simulator's RIM root stands in for the NVIDIA
CoRIM signing root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
RIM_INDEXES = 64


def build_rim(
    *,
    product: str,
    version: str,
    golden: Mapping[int, Sequence[bytes]],
    signer_key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
) -> bytes:
    """A signed RIM with ``RIM_INDEXES`` measurements; indexes in ``golden`` are active with those alternatives."""
    root = etree.Element(
        f"{{{SWID_NS}}}SoftwareIdentity",
        nsmap={None: SWID_NS, "ns2": SHA384_NS},
        attrib={"corpus": "false", "name": product, "patch": "false", "supplemental": "false", "version": "1.0",
                "tagVersion": "0", "tagId": f"sim-{product}-{version}"},
    )  # fmt: skip
    etree.SubElement(
        root, f"{{{SWID_NS}}}Entity", name="NVIDIA Corporation (simulated)", role="softwareCreator tagCreator"
    )
    etree.SubElement(
        root, f"{{{SWID_NS}}}Meta", colloquialVersion=version, edition="GPU", product=product, revision="r1"
    )
    payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
    for index in range(RIM_INDEXES):
        values = list(golden.get(index, [bytes(48)]))
        attrs = {
            "type": "Measurement",
            "index": str(index),
            "active": "True" if index in golden else "False",
            "alternatives": str(len(values)),
            "name": f"Measurement_{index}",
            "size": "48",
        }
        attrs.update({f"{{{SHA384_NS}}}Hash{k}": v.hex() for k, v in enumerate(values)})
        etree.SubElement(payload, f"{{{SWID_NS}}}Resource", attrib=attrs)
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    key_pem = signer_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    certs = [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]
    signed = signer.sign(root, key=key_pem, cert=certs)
    return bytes(etree.tostring(signed, xml_declaration=False))
