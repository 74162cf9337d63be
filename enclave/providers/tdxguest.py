"""/dev/tdx_guest (include/uapi/linux/tdx-guest.h) and why it is not an evidence source here.

TDX_CMD_GET_REPORT0 returns a TDREPORT: 1024 bytes MAC'd with a key only this platform's CPU
can check. A remote verifier cannot check it; it first has to be turned into a quote by the TD
Quoting Enclave that the host runs (reached through the host's Quote Generation Service). Current
kernels do that conversion behind configfs-tsm (``provider`` = ``tdx_guest``); upstream kernels
have no quote ioctl on this device. So this provider never returns evidence:
``get_evidence`` says to use configfs-tsm. ``tdreport`` stays for local diagnostics (it shows the
TD's measurements and proves the device works).
"""

from __future__ import annotations

from pathlib import Path

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError
from enclave.providers._ioctl import IoctlFn, device_ioctl, errno_name, iowr
from enclave.providers.base import REPORT_DATA_SIZE, Evidence, check_report_data
from enclave.providers.configfs import DEFAULT_ROOT

DEFAULT_DEVICE = Path("/dev/tdx_guest")
TDREPORT_SIZE = 1024
REPORT_REQUEST_SIZE = REPORT_DATA_SIZE + TDREPORT_SIZE  # struct tdx_report_req
TDX_CMD_GET_REPORT0 = iowr("T", 1, REPORT_REQUEST_SIZE)
TDREPORT_REPORT_DATA_OFFSET = 128  # REPORTMACSTRUCT: type 4, reserved 12, CPUSVN 16, two 48-byte hashes


class TdxGuestProvider:
    """TDX via /dev/tdx_guest: TDREPORTs only, never remotely verifiable evidence."""

    name = "tdx-guest"
    tee = Tee.TDX

    def __init__(
        self,
        device: Path | str = DEFAULT_DEVICE,
        *,
        tsm_root: Path | str = DEFAULT_ROOT,
        ioctl: IoctlFn | None = None,
    ) -> None:
        self.device = Path(device)
        self._tsm_root = Path(tsm_root)
        self._ioctl = ioctl if ioctl is not None else device_ioctl(self.device)

    def __repr__(self) -> str:
        return f"TdxGuestProvider(device={str(self.device)!r})"

    def get_evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        present = "is present" if self._tsm_root.is_dir() else "is not present on this node"
        raise NodeError(
            f"{self.device} gives only a TDREPORT, which cannot be verified off this machine; a TDX "
            f"quote comes from the host's quoting service through configfs-tsm ({self._tsm_root} {present})",
            code=NodeCode.PROVIDER_UNAVAILABLE,
            hint="use the configfs-tsm provider (Linux >= 6.7 with TDX quote support and a host QGS)",
        )

    def tdreport(self, report_data: bytes) -> bytes:
        """TDX_CMD_GET_REPORT0: a 1024-byte TDREPORT over ``report_data`` (diagnostics only)."""
        data = check_report_data(report_data)
        arg = bytearray(data + bytes(TDREPORT_SIZE))
        try:
            self._ioctl(TDX_CMD_GET_REPORT0, arg)
        except OSError as exc:
            raise NodeError(
                f"{self.device}: TDX_CMD_GET_REPORT0 failed: {errno_name(exc)}",
                code=NodeCode.PROVIDER_FAILED,
            ) from exc
        report = bytes(arg[REPORT_DATA_SIZE:])
        embedded = report[TDREPORT_REPORT_DATA_OFFSET : TDREPORT_REPORT_DATA_OFFSET + REPORT_DATA_SIZE]
        if embedded != data:
            raise NodeError(
                "the TDREPORT does not carry the report data that was asked for",
                code=NodeCode.PROVIDER_BAD_OUTPUT,
            )
        return report
