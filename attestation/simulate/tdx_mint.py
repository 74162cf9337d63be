"""Minting TDX quotes (v4, v5) with PCK chains and matching Intel PCS collateral under a test root."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from attestation.simulate._certs import Window, serial_of
from attestation.simulate.faults import TDX_FAULTS, Fault, check_faults
from attestation.simulate.intel import IntelCa, PckTcb, pem_chain
from attestation.simulate.intel_collateral import (
    OUT_OF_DATE,
    QE_ISVPRODID,
    REVOKED,
    UP_TO_DATE,
    ModuleIdentity,
    QeIdentityLevel,
    TdxTcbLevel,
    Validity,
    qe_identity_body,
    signed_document,
    tcb_info_body,
)
from attestation.simulate.tdx_quote import (
    BODY_TYPE_TDX10,
    TD_ATTR_DEBUG,
    TD_ATTR_SEPT_VE_DISABLE,
    QeReport,
    TdReportBody,
    certification_data,
    public_xy,
    qe_binding,
    quote,
    raw_p256_signature,
    signed_region,
)

# Synthetic platform defaults, shaped like a real Sapphire/Emerald Rapids platform.
DEFAULT_FMSPC = bytes.fromhex("5e5e5e000000")
PCE_ID = bytes(2)
DEFAULT_SGX_SVNS = (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
DEFAULT_PCE_SVN = 13
DEFAULT_TEE_TCB_SVN = bytes([6, 1, 3]) + bytes(13)  # [0] module SVN, [1] module major version
DEFAULT_QE_ISVSVN = 8
DEFAULT_XFAM = 0x0000_0000_0006_02E7
DEFAULT_PCK_TCB = PckTcb(DEFAULT_SGX_SVNS, DEFAULT_PCE_SVN, bytes(DEFAULT_SGX_SVNS))
SIM_QE_MRSIGNER = hashlib.sha256(b"sovereign simulated TD quoting enclave signer").digest()
SIM_QE_MRENCLAVE = hashlib.sha256(b"sovereign simulated TD quoting enclave").digest()
SIM_MRSEAM = hashlib.sha384(b"sovereign simulated TDX module").digest()
QE_AUTH_DATA = bytes(range(32))
# INIT | MODE64BIT | PROVISIONKEY, XFRM 0xE7; matches QE_ATTRIBUTES under Intel's mask.
SIM_QE_REPORT_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")


@dataclass(frozen=True)
class TdxPlatform:
    """The TCB a quote reports: PCK TCB (SGX SVNs, PCESVN, CPUSVN), TEE_TCB_SVN, QE ISVSVN."""

    fmspc: bytes = DEFAULT_FMSPC
    pck: PckTcb = DEFAULT_PCK_TCB
    tee_tcb_svn: bytes = DEFAULT_TEE_TCB_SVN
    qe_isvsvn: int = DEFAULT_QE_ISVSVN

    def level(self, status: str, date: datetime, *, bump: int = 0) -> TdxTcbLevel:
        """A TCB level equal to this platform (``bump``: every SVN shifted by that amount)."""

        def shift(values: Iterable[int]) -> tuple[int, ...]:
            out = tuple(v + bump for v in values)
            if any(not 0 <= v <= 0xFF for v in out):
                raise ValueError("cannot shift TCB level beyond 0..255")
            return out

        # tdxtcbcomponents[1] is the module's major version, matched through tdxModuleIdentities.
        tdx = list(shift(self.tee_tcb_svn))
        tdx[1] = 0
        return TdxTcbLevel(
            sgx_svns=shift(self.pck.sgx_svns),
            pcesvn=self.pck.pcesvn + bump,
            tdx_svns=tuple(tdx),
            date=date,
            status=status,
            advisory_ids=() if status == UP_TO_DATE else ("INTEL-SA-99999",),
        )

    def levels(self, faults: frozenset[Fault], now: datetime) -> list[TdxTcbLevel]:
        recent, older = now - timedelta(days=30), now - timedelta(days=200)
        if Fault.TCB_NOT_MATCHED in faults:
            return [self.level(UP_TO_DATE, recent, bump=1)]
        if Fault.TCB_OUT_OF_DATE in faults:
            return [self.level(UP_TO_DATE, recent, bump=1), self.level(OUT_OF_DATE, older)]
        if Fault.TCB_REVOKED in faults:
            return [self.level(UP_TO_DATE, recent, bump=1), self.level(REVOKED, older)]
        out = [self.level(UP_TO_DATE, recent)]
        if min(*self.pck.sgx_svns, self.pck.pcesvn, *self.tee_tcb_svn[:1], *self.tee_tcb_svn[2:]) > 0:
            out.append(self.level(OUT_OF_DATE, older, bump=-1))
        return out

    def modules(self, now: datetime) -> list[ModuleIdentity]:
        version, svn = self.tee_tcb_svn[1], self.tee_tcb_svn[0]
        if version == 0:
            return []
        return [ModuleIdentity(version, ((svn, UP_TO_DATE),), now - timedelta(days=30))]


@dataclass(frozen=True, eq=False)
class MintedTdx:
    """A quote and the collateral that fits it (``TdxCollateral.from_items(**minted.collateral)``),
    already reflecting the faults."""

    quote: bytes
    pck_chain_der: list[bytes]
    platform: TdxPlatform
    faults: frozenset[Fault]
    collateral: dict[str, list[bytes]] = field(repr=False)


class TdxMinting:
    """The TDX half of ``SimulatedPki``: Intel CAs, PCK leaves, quotes and PCS collateral."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._intel_cas: dict[bool, IntelCa] = {}
        self._pck_keys: dict[tuple[Any, ...], ec.EllipticCurvePrivateKey] = {}
        self._pcks: dict[tuple[Any, ...], bytes] = {}
        self._attestation_key: ec.EllipticCurvePrivateKey | None = None

    def intel_ca(self, *, foreign: bool = False) -> IntelCa:
        """The Intel hierarchy (``foreign``: a same-named one under an unpinned root)."""
        if foreign not in self._intel_cas:
            self._intel_cas[foreign] = IntelCa.generate(self.now)
        return self._intel_cas[foreign]

    def _quote_key(self) -> ec.EllipticCurvePrivateKey:
        if self._attestation_key is None:
            self._attestation_key = ec.generate_private_key(ec.SECP256R1())
        return self._attestation_key

    def _pck(
        self, platform: TdxPlatform, *, foreign: bool, expired: bool
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        key_id = (foreign, platform.fmspc, platform.pck)
        if key_id not in self._pck_keys:
            self._pck_keys[key_id] = ec.generate_private_key(ec.SECP256R1())
        key = self._pck_keys[key_id]
        cert_id = (*key_id, expired)
        if cert_id not in self._pcks:
            ppid = hashlib.sha256(b"ppid" + platform.fmspc).digest()[:16]
            self._pcks[cert_id] = self.intel_ca(foreign=foreign).pck(
                key,
                tcb=platform.pck,
                fmspc=platform.fmspc,
                pce_id=PCE_ID,
                ppid=ppid,
                platform_instance_id=hashlib.sha256(b"instance" + ppid).digest()[:16],
                window=Window.expired(self.now) if expired else Window.around(self.now, days=7 * 365),
            )
        return key, self._pcks[cert_id]

    def mint_tdx_quote(
        self,
        *,
        version: int = 4,
        body_type: int = BODY_TYPE_TDX10,
        mrtd: bytes = bytes(48),
        rtmrs: Sequence[bytes] = (bytes(48),) * 4,
        report_data: bytes = bytes(64),
        mrconfigid: bytes = bytes(48),
        mrowner: bytes = bytes(48),
        mrownerconfig: bytes = bytes(48),
        td_attributes: int = TD_ATTR_SEPT_VE_DISABLE,
        debug: bool = False,
        xfam: int = DEFAULT_XFAM,
        mrseam: bytes = SIM_MRSEAM,
        tee_tcb_svn: bytes = DEFAULT_TEE_TCB_SVN,
        fmspc: bytes = DEFAULT_FMSPC,
        pce_svn: int = DEFAULT_PCE_SVN,
        sgx_comp_svns: Sequence[int] = DEFAULT_SGX_SVNS,
        cpusvn: bytes | None = None,
        qe_isvsvn: int = DEFAULT_QE_ISVSVN,
        faults: Iterable[Fault] = (),
    ) -> MintedTdx:
        chosen = check_faults(faults, TDX_FAULTS, "TDX")
        if len(fmspc) != 6:
            raise ValueError("fmspc must be 6 bytes")
        svns = tuple(sgx_comp_svns)
        platform = TdxPlatform(
            fmspc=fmspc,
            pck=PckTcb(svns, pce_svn, cpusvn if cpusvn is not None else bytes(svns)),
            tee_tcb_svn=tee_tcb_svn,
            qe_isvsvn=qe_isvsvn,
        )
        body = TdReportBody(
            tee_tcb_svn=tee_tcb_svn,
            mrseam=mrseam,
            td_attributes=td_attributes | TD_ATTR_DEBUG if debug else td_attributes,
            xfam=xfam,
            mrtd=mrtd,
            mrconfigid=mrconfigid,
            mrowner=mrowner,
            mrownerconfig=mrownerconfig,
            rtmrs=_four(rtmrs),
            report_data=report_data,
            tee_tcb_svn2=tee_tcb_svn,
        )
        # QE-defined user data: 16 bytes of QE id, then 4 zero bytes.
        signed = signed_region(version, body_type, secrets.token_bytes(16) + bytes(4), body)

        att_key = self._quote_key()
        att_xy = public_xy(att_key)
        quote_sig = bytearray(raw_p256_signature(att_key, signed))
        if Fault.BAD_SIGNATURE in chosen:
            quote_sig[5] ^= 0x01
        cert_data, chain = self._certification(platform, att_xy, chosen)
        return MintedTdx(
            quote=quote(signed, bytes(quote_sig), att_xy, cert_data),
            pck_chain_der=chain,
            platform=platform,
            faults=chosen,
            collateral=self._collateral(platform, chosen, revoked_pck=chain[0]),
        )

    def _certification(
        self, platform: TdxPlatform, att_xy: bytes, faults: frozenset[Fault]
    ) -> tuple[bytes, list[bytes]]:
        """Type-6 certification data (QE report signed by the PCK key, binding the attestation key)
        and the PCK chain it carries."""
        foreign = Fault.FOREIGN_CHAIN in faults
        pck_key, pck_der = self._pck(platform, foreign=foreign, expired=Fault.EXPIRED_CERT in faults)
        ca = self.intel_ca(foreign=foreign)
        binding = bytearray(qe_binding(att_xy, QE_AUTH_DATA))
        if Fault.QE_BINDING in faults:
            binding[0] ^= 0x01
        qe_report = QeReport(
            cpusvn=platform.pck.cpusvn,
            miscselect=0,
            attributes=SIM_QE_REPORT_ATTRIBUTES,
            mrenclave=SIM_QE_MRENCLAVE,
            mrsigner=SIM_QE_MRSIGNER,
            isvprodid=QE_ISVPRODID,
            isvsvn=platform.qe_isvsvn,
            report_data=bytes(binding),
        ).encode()
        qe_sig = bytearray(raw_p256_signature(pck_key, qe_report))
        if Fault.QE_REPORT_SIGNATURE in faults:
            qe_sig[5] ^= 0x01
        chain = [pck_der, ca.platform_der, ca.root_der]
        pem = pem_chain(chain) + b"\0"
        return certification_data(qe_report, bytes(qe_sig), QE_AUTH_DATA, pem), chain

    def tdx_tcb_info(
        self,
        *,
        fmspc: bytes = DEFAULT_FMSPC,
        levels: Sequence[TdxTcbLevel] | None = None,
        modules: Sequence[ModuleIdentity] | None = None,
        issue_date: datetime | None = None,
        next_update: datetime | None = None,
        corrupt_signature: bool = False,
    ) -> bytes:
        """Signed TCB info ``{"tcbInfo": ..., "signature": ...}``; defaults fit the default platform."""
        platform = TdxPlatform(fmspc=fmspc)
        body = tcb_info_body(
            fmspc=fmspc,
            pce_id=PCE_ID,
            levels=levels if levels is not None else platform.levels(frozenset(), self.now),
            modules=modules if modules is not None else platform.modules(self.now),
            validity=self._validity(issue_date, next_update),
        )
        return signed_document("tcbInfo", body, self.intel_ca().tcb_signing, corrupt=corrupt_signature)

    def tdx_qe_identity(
        self,
        *,
        mrsigner: bytes = SIM_QE_MRSIGNER,
        levels: Sequence[QeIdentityLevel] | None = None,
        issue_date: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        if levels is None:
            levels = [QeIdentityLevel(DEFAULT_QE_ISVSVN, self.now - timedelta(days=30))]
        body = qe_identity_body(
            mrsigner=mrsigner, levels=levels, validity=self._validity(issue_date, next_update)
        )
        return signed_document("enclaveIdentity", body, self.intel_ca().tcb_signing)

    def _validity(self, issue_date: datetime | None, next_update: datetime | None) -> Validity:
        return Validity(
            issue_date if issue_date is not None else self.now - timedelta(days=1),
            next_update if next_update is not None else self.now + timedelta(days=30),
        )

    def pck_crl(
        self,
        *,
        revoked_serials: Iterable[int] = (),
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """CRL by the PCK Platform CA."""
        return self.intel_ca().pck_crl(
            revoked_serials=revoked_serials, this_update=this_update, next_update=next_update
        )

    def root_crl(
        self,
        *,
        revoked_serials: Iterable[int] = (),
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """CRL by the Intel SGX Root CA."""
        return self.intel_ca().root_crl(
            revoked_serials=revoked_serials, this_update=this_update, next_update=next_update
        )

    def tdx_collateral_items(self, *, fmspc: bytes = DEFAULT_FMSPC) -> dict[str, list[bytes]]:
        """For ``TdxCollateral.from_items(**items)``: collateral fitting the default platform."""
        return self._collateral(TdxPlatform(fmspc=fmspc), frozenset())

    def _collateral(
        self, platform: TdxPlatform, faults: frozenset[Fault], *, revoked_pck: bytes | None = None
    ) -> dict[str, list[bytes]]:
        """TCB info and QE identity for ``platform``, both CRLs and the CA certificates, shaped by
        ``faults`` (``revoked_pck`` is listed on the PCK CRL when REVOKED is among them)."""
        ca = self.intel_ca()
        dates: dict[str, datetime] = {}
        if Fault.EXPIRED_COLLATERAL in faults:
            dates = {
                "issue_date": self.now - timedelta(days=60),
                "next_update": self.now - timedelta(days=30),
            }
        qe_levels = [QeIdentityLevel(platform.qe_isvsvn, self.now - timedelta(days=30))]
        revoked = [serial_of(revoked_pck)] if Fault.REVOKED in faults and revoked_pck else []
        mrsigner = SIM_QE_MRSIGNER
        if Fault.QE_IDENTITY_MISMATCH in faults:
            mrsigner = hashlib.sha256(b"some other quoting enclave signer").digest()
        return {
            "tcb_infos": [
                self.tdx_tcb_info(
                    fmspc=platform.fmspc,
                    levels=platform.levels(faults, self.now),
                    modules=platform.modules(self.now),
                    corrupt_signature=Fault.COLLATERAL_SIGNATURE in faults,
                    **dates,
                )
            ],
            "qe_identities": [self.tdx_qe_identity(mrsigner=mrsigner, levels=qe_levels, **dates)],
            "crls": [ca.pck_crl(revoked_serials=revoked), ca.root_crl()],
            "certs": [ca.root_der, ca.platform_der, ca.tcb_signing_der],
        }


def _four(rtmrs: Sequence[bytes]) -> tuple[bytes, bytes, bytes, bytes]:
    if len(rtmrs) != 4:
        raise ValueError("rtmrs must be four 48-byte values")
    return (rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3])
