"""What to fetch, and from where: AMD KDS and Intel PCS v4 URLs (pure).

AMD KDS (https://kdsintf.amd.com): ``/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``
(Turin: 8-byte hwid and ``fmcSPL``), ``/{vcek|vlek}/v1/{product}/cert_chain`` (PEM: ASK or ASVK, then
ARK) and ``/{vcek|vlek}/v1/{product}/crl`` (DER). VLEK leaves themselves are not public: the cloud
provider hands them out, and nodes send them in the extended report's certificate table.

Intel PCS v4 (https://api.trustedservices.intel.com): ``/tdx/certification/v4/tcb?fmspc=..`` (issuer
chain in the ``TCB-Info-Issuer-Chain`` header), ``/tdx/certification/v4/qe/identity``
(``SGX-Enclave-Identity-Issuer-Chain``), ``/sgx/certification/v4/pckcrl?ca=platform&encoding=der``
(``SGX-PCK-CRL-Issuer-Chain``); the root CA CRL is at certificates.trustedservices.intel.com.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlencode

from attestation.errors import Code, CollateralError

AMD_KDS = "https://kdsintf.amd.com"
INTEL_PCS = "https://api.trustedservices.intel.com"
INTEL_CERTS = "https://certificates.trustedservices.intel.com"
PRODUCTS = ("Milan", "Genoa", "Turin")
_HWID_BYTES = {"Milan": 64, "Genoa": 64, "Turin": 8}
_TCB_KEYS = {"bl": "blSPL", "tee": "teeSPL", "snp": "snpSPL", "ucode": "ucodeSPL", "fmc": "fmcSPL"}


def _bad(message: str, hint: str) -> CollateralError:
    return CollateralError(message, code=Code.COLLATERAL_MALFORMED, hint=hint)


@dataclass(frozen=True)
class SnpTarget:
    product: str
    chip_id: bytes
    tcb: tuple[tuple[str, int], ...]  # KDS query parameters, in KDS order


def parse_snp_target(text: str) -> SnpTarget:
    """``PRODUCT:CHIP_ID_HEX:bl=N,tee=N,snp=N,ucode=N[,fmc=N]`` (the node's REPORTED_TCB fields)."""
    hint = "e.g. Genoa:<128 hex digits of CHIP_ID>:bl=7,tee=0,snp=14,ucode=72"
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in PRODUCTS:
        raise _bad(
            f"SNP target {text[:40]!r} is not PRODUCT:CHIP_ID:TCB with PRODUCT one of {PRODUCTS}", hint
        )
    product, chip_hex, tcb_text = parts
    try:
        chip = bytes.fromhex(chip_hex)
    except ValueError:
        raise _bad("chip id is not hex", hint) from None
    if len(chip) != _HWID_BYTES[product]:
        raise _bad(f"a {product} chip id has {_HWID_BYTES[product]} bytes, not {len(chip)}", hint)
    values: dict[str, int] = {}
    for pair in tcb_text.split(","):
        key, _, value = pair.partition("=")
        if key not in _TCB_KEYS or not re.fullmatch(r"\d{1,3}", value) or int(value) > 255:
            raise _bad(f"TCB component {pair!r} is not one of {sorted(_TCB_KEYS)}=0..255", hint)
        values[key] = int(value)
    needed = {"bl", "tee", "snp", "ucode"} | ({"fmc"} if product == "Turin" else set())
    if set(values) != needed:
        raise _bad(f"{product} TCB needs exactly {sorted(needed)}", hint)
    order = ["fmc", "bl", "tee", "snp", "ucode"]
    return SnpTarget(product, chip, tuple((_TCB_KEYS[k], values[k]) for k in order if k in values))


@dataclass(frozen=True)
class Request:
    url: str
    issuer_chain_header: str | None = None  # Intel: the signing chain travels in a header
    immutable: bool = False  # certificates for a fixed chip/TCB never change: cache forever
    body: bytes | None = None  # POSTed when set (OCSP requests)
    content_type: str = "application/octet-stream"


@dataclass
class FetchPlan:
    snp: list[SnpTarget] = field(default_factory=list)
    vlek: list[str] = field(default_factory=list)
    fmspcs: list[str] = field(default_factory=list)

    def requests(
        self, amd: str = AMD_KDS, intel: str = INTEL_PCS, intel_certs: str = INTEL_CERTS
    ) -> list[Request]:
        out: list[Request] = []
        for product in self.vlek:
            if product not in PRODUCTS:
                raise _bad(f"unknown SNP product {product!r}", f"one of {PRODUCTS}")
        signers = sorted({("vcek", t.product) for t in self.snp} | {("vlek", p) for p in self.vlek})
        for target in self.snp:
            query = urlencode(list(target.tcb))
            out.append(
                Request(f"{amd}/vcek/v1/{target.product}/{target.chip_id.hex()}?{query}", immutable=True)
            )
        for kind, product in signers:
            out.append(Request(f"{amd}/{kind}/v1/{product}/cert_chain", immutable=True))
            out.append(Request(f"{amd}/{kind}/v1/{product}/crl"))
        if self.fmspcs:
            for fmspc in sorted(set(self.fmspcs)):
                if not re.fullmatch(r"[0-9a-fA-F]{12}", fmspc):
                    raise _bad(f"FMSPC {fmspc!r} is not 6 bytes of hex", "e.g. 90c06f000000")
                out.append(
                    Request(
                        f"{intel}/tdx/certification/v4/tcb?fmspc={fmspc.lower()}", "TCB-Info-Issuer-Chain"
                    )
                )
            out.append(
                Request(f"{intel}/tdx/certification/v4/qe/identity", "SGX-Enclave-Identity-Issuer-Chain")
            )
            out.append(
                Request(
                    f"{intel}/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
                    "SGX-PCK-CRL-Issuer-Chain",
                )
            )
            out.append(Request(f"{intel_certs}/IntelSGXRootCA.der"))
        return out
