"""SEV-SNP evidence through /dev/sev-guest (include/uapi/linux/sev-guest.h).

SNP_GET_REPORT and SNP_GET_EXT_REPORT both take ``struct snp_guest_request_ioctl``
(u8 msg_version; u64 req_data; u64 resp_data; u64 exitinfo2 = fw_error | vmm_error << 32), whose
``req_data``/``resp_data`` are user-space addresses of the request and the 4000-byte response.
The request is ``struct snp_report_req`` (64-byte user_data, u32 vmpl, 28 reserved); the extended
request appends u64 certs_address and u32 certs_len (page-aligned, at most 16 KiB), where the
kernel writes the host's certificate table. The response is the firmware's MSG_REPORT_RSP:
u32 status, u32 report_size, 24 reserved bytes, then the report.

Packing and parsing are pure functions; the ioctl itself is injected (``IoctlFn``).
"""

from __future__ import annotations

import ctypes
import errno
import struct
from pathlib import Path

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError
from enclave.providers._ioctl import IoctlFn, device_ioctl, errno_name, iowr
from enclave.providers.base import SNP_REPORT_SIZE, Evidence, check_evidence, check_report_data
from enclave.providers.certtable import endorsements

DEFAULT_DEVICE = Path("/dev/sev-guest")
MSG_VERSION = 1
GUEST_REQUEST = struct.Struct("<B7xQQQ")  # struct snp_guest_request_ioctl
REPORT_REQUEST = struct.Struct("<64sI28x")  # struct snp_report_req
EXT_REPORT_REQUEST = struct.Struct(f"<{REPORT_REQUEST.size}sQI4x")  # struct snp_ext_report_req
REPORT_RESPONSE_SIZE = 4000  # struct snp_report_resp
RESPONSE_HEADER = struct.Struct("<II24x")  # MSG_REPORT_RSP: status, report_size, reserved
CERTS_MAX = 0x4000  # SEV_FW_BLOB_MAX_SIZE: the kernel refuses larger certificate buffers
MAX_VMPL = 3
SNP_GET_REPORT = iowr("S", 0x0, GUEST_REQUEST.size)
SNP_GET_EXT_REPORT = iowr("S", 0x2, GUEST_REQUEST.size)
VMM_ERR_INVALID_LEN = 1
_FW_STATUS = {0x16: "INVALID_PARAM", 0x27: "INVALID_KEY"}


def pack_report_request(report_data: bytes, vmpl: int) -> bytes:
    return REPORT_REQUEST.pack(check_report_data(report_data), vmpl)


def pack_ext_report_request(report_request: bytes, certs_address: int, certs_len: int) -> bytes:
    return EXT_REPORT_REQUEST.pack(report_request, certs_address, certs_len)


def pack_guest_request(req_address: int, resp_address: int) -> bytearray:
    return bytearray(GUEST_REQUEST.pack(MSG_VERSION, req_address, resp_address, 0))


def exit_info(guest_request: bytes) -> tuple[int, int]:
    """(fw_error, vmm_error) from a ``snp_guest_request_ioctl`` after the call."""
    _, _, _, exitinfo2 = GUEST_REQUEST.unpack(guest_request)
    return exitinfo2 & 0xFFFFFFFF, exitinfo2 >> 32


def parse_report_response(response: bytes) -> bytes:
    """The ATTESTATION_REPORT inside a MSG_REPORT_RSP; typed errors for any other shape."""
    if len(response) < RESPONSE_HEADER.size + SNP_REPORT_SIZE:
        raise NodeError(
            f"SNP report response of {len(response)} bytes is too short", code=NodeCode.PROVIDER_BAD_OUTPUT
        )
    status, size = RESPONSE_HEADER.unpack_from(response)
    if status != 0:
        name = _FW_STATUS.get(status, "unknown")
        raise NodeError(
            f"SNP firmware refused the report request: status {status:#x} ({name})",
            code=NodeCode.PROVIDER_FAILED,
            hint="check the requested VMPL is not below the guest's own VMPL",
        )
    if size != SNP_REPORT_SIZE:
        raise NodeError(
            f"SNP firmware returned a {size}-byte report, expected {SNP_REPORT_SIZE}",
            code=NodeCode.PROVIDER_BAD_OUTPUT,
        )
    return bytes(response[RESPONSE_HEADER.size : RESPONSE_HEADER.size + size])


class SevGuestProvider:
    """SEV-SNP reports from /dev/sev-guest. ``extended`` (default) also asks the host for its
    certificate table (VCEK/VLEK, ASK, ARK); a host without one yields no endorsements."""

    name = "sev-guest"
    tee = Tee.SNP

    def __init__(
        self,
        device: Path | str = DEFAULT_DEVICE,
        *,
        vmpl: int = 0,
        extended: bool = True,
        ioctl: IoctlFn | None = None,
    ) -> None:
        if not 0 <= vmpl <= MAX_VMPL:
            raise NodeError(f"VMPL {vmpl} is outside 0..{MAX_VMPL}", code=NodeCode.PROVIDER_UNSUPPORTED)
        self.device = Path(device)
        self._vmpl = vmpl
        self._extended = extended
        self._ioctl = ioctl if ioctl is not None else device_ioctl(self.device)

    def __repr__(self) -> str:
        return f"SevGuestProvider(device={str(self.device)!r}, vmpl={self._vmpl}, extended={self._extended})"

    def get_evidence(self, report_data: bytes) -> Evidence:
        report_request = pack_report_request(report_data, self._vmpl)
        response = ctypes.create_string_buffer(REPORT_RESPONSE_SIZE)
        certs = ctypes.create_string_buffer(CERTS_MAX)  # zero-filled: "no certificates"
        if self._extended:
            request = ctypes.create_string_buffer(
                pack_ext_report_request(report_request, ctypes.addressof(certs), CERTS_MAX),
                EXT_REPORT_REQUEST.size,
            )
            number = SNP_GET_EXT_REPORT
        else:
            request = ctypes.create_string_buffer(report_request, REPORT_REQUEST.size)
            number = SNP_GET_REPORT
        arg = pack_guest_request(ctypes.addressof(request), ctypes.addressof(response))
        try:
            self._ioctl(number, arg)
        except OSError as exc:
            raise self._ioctl_error(exc, arg, request.raw) from exc
        report = parse_report_response(response.raw)
        certificates = endorsements(certs.raw) if self._extended else ()
        evidence = Evidence(tee=Tee.SNP, blob=report, endorsements=certificates, provider=self.name)
        return check_evidence(evidence, tee=Tee.SNP, report_data=report_request[:64])

    def _ioctl_error(self, exc: OSError, arg: bytearray, request: bytes) -> NodeError:
        fw_error, vmm_error = exit_info(bytes(arg))
        if self._extended and exc.errno == errno.EIO and vmm_error == VMM_ERR_INVALID_LEN:
            _, _, needed = EXT_REPORT_REQUEST.unpack(request)
            return NodeError(
                f"the host's SNP certificate table needs {needed} bytes, more than the kernel's "
                f"{CERTS_MAX}-byte limit",
                code=NodeCode.PROVIDER_FAILED,
                hint="use SevGuestProvider(extended=False) and supply the VCEK from the collateral store",
            )
        return NodeError(
            f"{self.device}: {'SNP_GET_EXT_REPORT' if self._extended else 'SNP_GET_REPORT'} failed: "
            f"{errno_name(exc)} (fw_error {fw_error:#x}, vmm_error {vmm_error:#x})",
            code=NodeCode.PROVIDER_FAILED,
        )
