"""/dev/sev-guest and /dev/tdx_guest providers with a fake ioctl that behaves like the kernel:
it reads the request through the user-space addresses in the ioctl argument and writes the
response (and certificate table) back to the caller's memory."""

from __future__ import annotations

import ctypes
import errno
import struct
from pathlib import Path

import pytest

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError
from enclave.providers import Evidence, EvidenceProvider, SevGuestProvider, TdxGuestProvider
from enclave.providers._ioctl import IoctlFn
from enclave.providers.certtable import GUID_BY_KIND, CertKind, build_cert_table
from enclave.providers.sevguest import (
    CERTS_MAX,
    EXT_REPORT_REQUEST,
    GUEST_REQUEST,
    REPORT_REQUEST,
    REPORT_RESPONSE_SIZE,
    RESPONSE_HEADER,
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    parse_report_response,
)
from enclave.providers.tdxguest import TDX_CMD_GET_REPORT0

RD = bytes(range(64))
CERT = b"\x30\x82\x01\x00" + b"c" * 256


def snp_report(report_data: bytes) -> bytes:
    report = bytearray(0x4A0)
    struct.pack_into("<I", report, 0, 3)
    report[0x50:0x90] = report_data
    return bytes(report)


def test_abi_constants_match_the_kernel_headers() -> None:
    # _IOWR('S', n, 32-byte struct) and _IOWR('T', 1, 1088-byte struct) on x86-64
    assert SNP_GET_REPORT == 0xC0205300
    assert SNP_GET_EXT_REPORT == 0xC0205302
    assert TDX_CMD_GET_REPORT0 == 0xC4405401
    assert (GUEST_REQUEST.size, REPORT_REQUEST.size, EXT_REPORT_REQUEST.size) == (32, 96, 112)
    assert RESPONSE_HEADER.size == 32 and CERTS_MAX == 16384


class FakeSevGuest:
    def __init__(
        self,
        *,
        status: int = 0,
        report_size: int = 0x4A0,
        report: bytes | None = None,
        certs: bytes = b"",
        fail: tuple[int, int] | None = None,  # (errno, exitinfo2)
        certs_needed: int | None = None,
    ) -> None:
        self.status, self.report_size, self.report = status, report_size, report
        self.certs, self.fail, self.certs_needed = certs, fail, certs_needed
        self.calls: list[tuple[int, int, bytes]] = []

    def __call__(self, request: int, arg: bytearray) -> None:
        assert len(arg) == GUEST_REQUEST.size
        version, req_addr, resp_addr, _ = GUEST_REQUEST.unpack(arg)
        extended = request == SNP_GET_EXT_REPORT
        req = ctypes.string_at(req_addr, EXT_REPORT_REQUEST.size if extended else REPORT_REQUEST.size)
        self.calls.append((request, version, req))
        if version != 1:
            raise OSError(errno.EINVAL, "msg_version")
        user_data, _vmpl = REPORT_REQUEST.unpack(req[: REPORT_REQUEST.size])
        if self.fail is not None:
            struct.pack_into("<Q", arg, 24, self.fail[1])
            raise OSError(self.fail[0], "failed")
        if extended:
            _, certs_addr, certs_len = EXT_REPORT_REQUEST.unpack(req)
            if certs_len > CERTS_MAX or certs_len % 4096:
                raise OSError(errno.EINVAL, "certs_len")
            if self.certs_needed is not None:
                ctypes.memmove(req_addr + 104, struct.pack("<I", self.certs_needed), 4)
                struct.pack_into("<Q", arg, 24, 1 << 32)
                raise OSError(errno.EIO, "invalid length")
            ctypes.memmove(certs_addr, self.certs, len(self.certs))
        report = self.report if self.report is not None else snp_report(user_data)
        response = RESPONSE_HEADER.pack(self.status, self.report_size) + report
        assert len(response) <= REPORT_RESPONSE_SIZE
        ctypes.memmove(resp_addr, response, len(response))


def test_sev_guest_extended_report_with_certificates() -> None:
    certs = build_cert_table([(GUID_BY_KIND[CertKind.ASK], CERT), (GUID_BY_KIND[CertKind.VCEK], CERT + b"")])
    fake = FakeSevGuest(certs=certs)
    provider = SevGuestProvider("/dev/fake", vmpl=1, ioctl=fake)
    assert isinstance(provider, EvidenceProvider)
    evidence = provider.get_evidence(RD)
    assert evidence == Evidence(Tee.SNP, snp_report(RD), (CERT, CERT), "sev-guest")
    [(request, version, req)] = fake.calls
    assert request == SNP_GET_EXT_REPORT and version == 1
    report_req, certs_addr, certs_len = EXT_REPORT_REQUEST.unpack(req)
    assert report_req == RD + struct.pack("<I", 1) + bytes(28)
    assert certs_addr != 0 and certs_len == CERTS_MAX


def test_sev_guest_host_without_certificates() -> None:
    evidence = SevGuestProvider(ioctl=FakeSevGuest()).get_evidence(RD)
    assert evidence.blob == snp_report(RD) and evidence.endorsements == ()


def test_sev_guest_plain_report() -> None:
    fake = FakeSevGuest(certs=b"never written")
    evidence = SevGuestProvider(extended=False, ioctl=fake).get_evidence(RD)
    assert evidence.blob == snp_report(RD) and evidence.endorsements == ()
    [(request, _, req)] = fake.calls
    assert request == SNP_GET_REPORT and req == RD + bytes(32)


@pytest.mark.parametrize(
    ("fake", "code"),
    [
        (FakeSevGuest(status=0x16), NodeCode.PROVIDER_FAILED),
        (FakeSevGuest(status=0x27), NodeCode.PROVIDER_FAILED),
        (FakeSevGuest(report_size=1000), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeSevGuest(report=snp_report(bytes(64))), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeSevGuest(certs=b"\x05" * 40), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeSevGuest(fail=(errno.EIO, 0x16)), NodeCode.PROVIDER_FAILED),
        (FakeSevGuest(fail=(errno.ENOTTY, 0)), NodeCode.PROVIDER_FAILED),
        (FakeSevGuest(certs_needed=5 * 4096), NodeCode.PROVIDER_FAILED),
    ],
    ids=[
        "fw-invalid-param",
        "fw-invalid-key",
        "wrong-report-size",
        "foreign-report-data",
        "bad-cert-table",
        "fw-error",
        "vmpck-disabled",
        "certs-too-big",
    ],
)
def test_sev_guest_failures_are_typed(fake: FakeSevGuest, code: NodeCode) -> None:
    with pytest.raises(NodeError) as exc:
        SevGuestProvider(ioctl=fake).get_evidence(RD)
    assert exc.value.code is code


def test_sev_guest_error_messages_carry_firmware_and_vmm_errors() -> None:
    with pytest.raises(NodeError) as exc:
        SevGuestProvider(ioctl=FakeSevGuest(fail=(errno.EIO, (2 << 32) | 0x16))).get_evidence(RD)
    assert "EIO" in exc.value.message and "fw_error 0x16" in exc.value.message
    assert "vmm_error 0x2" in exc.value.message
    with pytest.raises(NodeError) as exc:
        SevGuestProvider(ioctl=FakeSevGuest(certs_needed=20480)).get_evidence(RD)
    assert "20480" in exc.value.message and "extended=False" in exc.value.hint


def test_parse_report_response_truncated() -> None:
    with pytest.raises(NodeError) as exc:
        parse_report_response(RESPONSE_HEADER.pack(0, 0x4A0) + bytes(100))
    assert exc.value.code is NodeCode.PROVIDER_BAD_OUTPUT


@pytest.mark.parametrize("vmpl", [-1, 4])
def test_sev_guest_refuses_bad_vmpl(vmpl: int) -> None:
    with pytest.raises(NodeError) as exc:
        SevGuestProvider(vmpl=vmpl, ioctl=FakeSevGuest())
    assert exc.value.code is NodeCode.PROVIDER_UNSUPPORTED


def test_sev_guest_refuses_bad_report_data_without_calling_the_device() -> None:
    fake = FakeSevGuest()
    with pytest.raises(NodeError) as exc:
        SevGuestProvider(ioctl=fake).get_evidence(RD[:32])
    assert exc.value.code is NodeCode.REPORT_DATA_INVALID and fake.calls == []


# ---------------------------------------------------------------- the real device path


def test_missing_device_is_unavailable(tmp_path: Path) -> None:
    for provider in (SevGuestProvider(tmp_path / "sev-guest"), TdxGuestProvider(tmp_path / "tdx_guest")):
        with pytest.raises(NodeError) as exc:
            if isinstance(provider, SevGuestProvider):
                provider.get_evidence(RD)
            else:
                provider.tdreport(RD)
        assert exc.value.code is NodeCode.PROVIDER_UNAVAILABLE


def test_a_file_that_is_not_the_device_fails_the_ioctl(tmp_path: Path) -> None:
    # A real open() and a real ioctl(): a regular file answers ENOTTY.
    not_a_device = tmp_path / "sev-guest"
    not_a_device.write_bytes(b"")
    with pytest.raises(NodeError) as exc:
        SevGuestProvider(not_a_device).get_evidence(RD)
    assert exc.value.code is NodeCode.PROVIDER_FAILED and "ENOTTY" in exc.value.message
    with pytest.raises(NodeError) as exc:
        TdxGuestProvider(not_a_device).tdreport(RD)
    assert exc.value.code is NodeCode.PROVIDER_FAILED and "ENOTTY" in exc.value.message


# ---------------------------------------------------------------- TDX


def fake_tdx(embed: bytes | None = None, calls: list[int] | None = None) -> IoctlFn:
    def ioctl(request: int, arg: bytearray) -> None:
        if calls is not None:
            calls.append(request)
        assert len(arg) == 64 + 1024
        report = bytearray(1024)
        report[128:192] = embed if embed is not None else arg[:64]
        arg[64:] = report

    return ioctl


def test_tdreport_carries_the_report_data() -> None:
    calls: list[int] = []
    report = TdxGuestProvider(ioctl=fake_tdx(calls=calls)).tdreport(RD)
    assert len(report) == 1024 and report[128:192] == RD and calls == [TDX_CMD_GET_REPORT0]


def test_tdreport_with_foreign_report_data_is_bad_output() -> None:
    with pytest.raises(NodeError) as exc:
        TdxGuestProvider(ioctl=fake_tdx(embed=bytes(64))).tdreport(RD)
    assert exc.value.code is NodeCode.PROVIDER_BAD_OUTPUT


def test_tdx_guest_gives_no_evidence_and_says_why(tmp_path: Path) -> None:
    calls: list[int] = []
    provider = TdxGuestProvider(ioctl=fake_tdx(calls=calls), tsm_root=tmp_path)
    assert provider.tee is Tee.TDX
    with pytest.raises(NodeError) as exc:
        provider.get_evidence(RD)
    assert exc.value.code is NodeCode.PROVIDER_UNAVAILABLE
    assert "configfs-tsm" in exc.value.message and "is present" in exc.value.message
    assert "configfs-tsm" in exc.value.hint and calls == []
    with pytest.raises(NodeError) as exc:
        provider.get_evidence(b"short")
    assert exc.value.code is NodeCode.REPORT_DATA_INVALID
