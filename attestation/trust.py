"""Trust anchors, pinned by SHA-256 fingerprint of the root certificate's DER.

The certificates themselves come from the collateral store; only their fingerprints live in code, so a
root can never be swapped by writing a file. Simulation is nothing but a different ``TrustStore``: the
verification code path is identical, and the production store refuses simulator roots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from attestation.errors import X509_PARSE_ERRORS, ChainInvalid, Code

# AMD ARK (self-signed RSA-4096) per product, from AMD's key distribution service.
AMD_ARK_SHA256: Mapping[str, str] = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
# Intel SGX Root CA (ECDSA P-256), root of every PCK chain and of TCB info / QE identity signing.
INTEL_SGX_ROOT_SHA256: frozenset[str] = frozenset(
    {"44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"}
)
# NVIDIA Device Identity CA (ECDSA P-384), root of every GPU device certificate chain (Hopper, Blackwell).
NVIDIA_DEVICE_ROOT_SHA256: frozenset[str] = frozenset(
    {"102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"}
)
# NVIDIA CoRIM signing Root CA (ECDSA P-384), root of the RIM (SWID tag) signing chains.
NVIDIA_RIM_ROOT_SHA256: frozenset[str] = frozenset(
    {"12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"}
)

# Every simulator root carries this organisation name, so production can say *why* it refuses.
SIMULATOR_ORGANIZATION = "sovereign TEE simulator (NOT FOR PRODUCTION)"


def fingerprint(cert_der: bytes) -> str:
    return hashlib.sha256(cert_der).hexdigest()


@dataclass(frozen=True)
class TrustStore:
    """Pinned roots. ``amd_arks`` maps an SNP product name to the ARK fingerprint."""

    name: str
    amd_arks: Mapping[str, str]
    intel_roots: frozenset[str]
    allow_simulated: bool = False
    nvidia_device_roots: frozenset[str] = frozenset()
    nvidia_rim_roots: frozenset[str] = frozenset()
    extra: Mapping[str, str] = field(default_factory=dict)

    def check_amd_root(self, product: str, ark_der: bytes) -> None:
        """Raise unless ``ark_der`` is the pinned ARK for ``product``."""
        pinned = self.amd_arks.get(product)
        if pinned is not None and fingerprint(ark_der) == pinned:
            return
        self._refuse(ark_der, f"AMD root for {product}")

    def check_intel_root(self, root_der: bytes) -> None:
        """Raise unless ``root_der`` is a pinned Intel SGX root."""
        if fingerprint(root_der) in self.intel_roots:
            return
        self._refuse(root_der, "Intel SGX root")

    def check_nvidia_device_root(self, root_der: bytes) -> None:
        """Raise unless ``root_der`` is a pinned NVIDIA Device Identity root."""
        if fingerprint(root_der) in self.nvidia_device_roots:
            return
        self._refuse(root_der, "NVIDIA Device Identity root")

    def check_nvidia_rim_root(self, root_der: bytes) -> None:
        """Raise unless ``root_der`` is a pinned NVIDIA RIM signing root."""
        if fingerprint(root_der) in self.nvidia_rim_roots:
            return
        self._refuse(root_der, "NVIDIA RIM root")

    def _refuse(self, root_der: bytes, what: str) -> None:
        if not self.allow_simulated and _is_simulator_root(root_der):
            raise ChainInvalid(
                f"{what} is a simulator test root; the '{self.name}' trust profile refuses it",
                code=Code.TEST_ROOT_IN_PRODUCTION,
            )
        raise ChainInvalid(
            f"{what} (sha256 {fingerprint(root_der)[:16]}...) is not pinned in the '{self.name}' trust profile",
            code=Code.UNTRUSTED_ROOT,
        )


def _is_simulator_root(root_der: bytes) -> bool:
    try:
        cert = x509.load_der_x509_certificate(root_der)
        orgs = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    except X509_PARSE_ERRORS:
        return False
    return any(a.value == SIMULATOR_ORGANIZATION for a in orgs)


PRODUCTION = TrustStore(
    name="production",
    amd_arks=AMD_ARK_SHA256,
    intel_roots=INTEL_SGX_ROOT_SHA256,
    nvidia_device_roots=NVIDIA_DEVICE_ROOT_SHA256,
    nvidia_rim_roots=NVIDIA_RIM_ROOT_SHA256,
)


def simulation(
    amd_arks: Mapping[str, bytes],
    intel_root: bytes,
    nvidia_device_root: bytes | None = None,
    nvidia_rim_root: bytes | None = None,
) -> TrustStore:
    """A store that pins the simulator's generated roots (and nothing else)."""
    return TrustStore(
        name="simulation",
        amd_arks={product: fingerprint(der) for product, der in amd_arks.items()},
        intel_roots=frozenset({fingerprint(intel_root)}),
        allow_simulated=True,
        nvidia_device_roots=frozenset({fingerprint(nvidia_device_root)})
        if nvidia_device_root
        else frozenset(),
        nvidia_rim_roots=frozenset({fingerprint(nvidia_rim_root)}) if nvidia_rim_root else frozenset(),
    )
