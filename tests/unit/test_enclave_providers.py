"""Evidence providers without TEE hardware: configfs-tsm against a fake kernel tree in tmp_path,
the SNP certificate table, the shared output checks, the simulated provider and detection."""

from __future__ import annotations

import errno
import os
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError
from enclave.providers import (
    ConfigfsTsmProvider,
    Evidence,
    EvidenceProvider,
    SevGuestProvider,
    SimulatedProvider,
    TdxGuestProvider,
    TsmFs,
    check_evidence,
    detect_provider,
)
from enclave.providers.base import embedded_report_data
from enclave.providers.certtable import (
    GUID_BY_KIND,
    CertKind,
    build_cert_table,
    endorsements,
    parse_cert_table,
)

RD = bytes(range(64))
OTHER_RD = bytes(64)


def snp_report(report_data: bytes, *, size: int = 0x4A0) -> bytes:
    report = bytearray(size)
    struct.pack_into("<I", report, 0, 2)
    report[0x50 : 0x50 + len(report_data)] = report_data
    return bytes(report)


def tdx_quote(report_data: bytes, *, version: int = 4) -> bytes:
    header = struct.pack("<HHI", version, 2, 0x81) + bytes(40)
    descriptor = struct.pack("<HI", 3, 648) if version == 5 else b""
    body = bytes(520) + report_data + bytes(64)
    return header + descriptor + body + struct.pack("<I", 16) + b"\x01" * 16


def der(tag: bytes, size: int) -> bytes:
    """A DER SEQUENCE of ``size`` content bytes (the table only needs the outer TLV)."""
    content = tag * size
    return b"\x30\x82" + size.to_bytes(2, "big") + content


VCEK, ASK, ARK, VLEK = der(b"v", 300), der(b"a", 400), der(b"r", 500), der(b"l", 300)


def codes(exc: pytest.ExceptionInfo[NodeError]) -> NodeCode:
    return exc.value.code


# ---------------------------------------------------------------- output checks


def test_embedded_report_data_snp_and_both_tdx_versions() -> None:
    assert embedded_report_data(Tee.SNP, snp_report(RD)) == RD
    assert embedded_report_data(Tee.TDX, tdx_quote(RD, version=4)) == RD
    assert embedded_report_data(Tee.TDX, tdx_quote(RD, version=5)) == RD


@pytest.mark.parametrize(
    ("tee", "blob"),
    [
        (Tee.SNP, b""),
        (Tee.SNP, snp_report(RD)[:-1]),
        (Tee.SNP, snp_report(RD) + b"\x00"),
        (Tee.TDX, tdx_quote(RD)[:40]),
        (Tee.TDX, tdx_quote(RD)[: 48 + 520 + 10]),
        (Tee.TDX, snp_report(RD)),
        (Tee.TDX, struct.pack("<HHI", 3, 2, 0x81) + bytes(700)),
        (Tee.SNP, bytes(70_000)),
    ],
    ids=["empty", "snp-short", "snp-long", "tdx-header", "tdx-truncated", "snp-as-tdx", "tdx-v3", "huge"],
)
def test_embedded_report_data_refuses_wrong_shapes(tee: Tee, blob: bytes) -> None:
    with pytest.raises(NodeError) as exc:
        embedded_report_data(tee, blob)
    assert codes(exc) is NodeCode.PROVIDER_BAD_OUTPUT


def test_check_evidence_refuses_other_report_data_and_other_tee() -> None:
    good = Evidence(Tee.SNP, snp_report(RD))
    assert check_evidence(good, tee=Tee.SNP, report_data=RD) is good
    with pytest.raises(NodeError) as exc:
        check_evidence(good, tee=Tee.SNP, report_data=OTHER_RD)
    assert codes(exc) is NodeCode.PROVIDER_BAD_OUTPUT
    with pytest.raises(NodeError) as exc:
        check_evidence(good, tee=Tee.TDX, report_data=RD)
    assert codes(exc) is NodeCode.PROVIDER_BAD_OUTPUT


def test_evidence_repr_is_short() -> None:
    text = repr(Evidence(Tee.SNP, snp_report(RD), (VCEK,), "x"))
    assert "1184 bytes" in text and "1 certs" in text and len(text) < 200


# ---------------------------------------------------------------- certificate table


def table(*kinds: tuple[CertKind, bytes]) -> bytes:
    return build_cert_table([(GUID_BY_KIND[k], d) for k, d in kinds])


def test_cert_table_orders_leaf_then_ask_then_ark() -> None:
    blob = table((CertKind.ARK, ARK), (CertKind.VCEK, VCEK), (CertKind.ASK, ASK))
    assert endorsements(blob) == (VCEK, ASK, ARK)
    kinds = [e.kind for e in parse_cert_table(blob)]
    assert kinds == [CertKind.ARK, CertKind.VCEK, CertKind.ASK]


def test_cert_table_vlek_and_unknown_guids() -> None:
    unknown = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
    blob = build_cert_table([(GUID_BY_KIND[CertKind.VLEK], VLEK), (unknown, b"not a cert")])
    entries = parse_cert_table(blob)
    assert [e.kind for e in entries] == [CertKind.VLEK, None]
    assert entries[1].guid == unknown and entries[1].data == b"not a cert"
    assert endorsements(blob) == (VLEK,)


def test_cert_table_guid_wire_bytes_are_rfc4122_order() -> None:
    blob = table((CertKind.VCEK, VCEK))
    assert blob[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")


@pytest.mark.parametrize("blob", [b"", bytes(24), bytes(0x4000), bytes(10)])
def test_cert_table_empty_means_no_certificates(blob: bytes) -> None:
    assert endorsements(blob) == ()


def test_cert_table_allows_zero_padding_after_a_certificate() -> None:
    guid = GUID_BY_KIND[CertKind.VCEK]
    blob = build_cert_table([(guid, VCEK + bytes(100))])
    assert endorsements(blob) == (VCEK,)


def _bad_tables() -> dict[str, bytes]:
    vcek = GUID_BY_KIND[CertKind.VCEK]
    good = table((CertKind.VCEK, VCEK))
    entry = struct.Struct("<16sII")
    return {
        "no-terminator": entry.pack(vcek.bytes, 24, 10) + b"\x01" * 10,
        "past-end": entry.pack(vcek.bytes, 48, 10_000) + bytes(24) + VCEK,
        "inside-header": entry.pack(vcek.bytes, 0, 24) + bytes(24) + VCEK,
        "zero-length": entry.pack(vcek.bytes, 48, 0) + bytes(24) + VCEK,
        "duplicate": build_cert_table([(vcek, VCEK), (vcek, VCEK)]),
        "not-der": build_cert_table([(vcek, b"\x04\x03abc")]),
        "truncated-der": good[: len(good) - 5],
        "trailing-junk": build_cert_table([(vcek, VCEK + b"\x00junk")]),
        "bad-der-length": build_cert_table([(vcek, b"\x30\x80" + bytes(5))]),
    }


@pytest.mark.parametrize("name", list(_bad_tables()))
def test_cert_table_refuses_malformed_tables(name: str) -> None:
    blob = _bad_tables()[name]
    with pytest.raises(NodeError) as exc:
        endorsements(blob)
    assert codes(exc) is NodeCode.PROVIDER_BAD_OUTPUT


def test_cert_table_accepts_a_real_vcek(vectors: Path) -> None:
    vcek = (vectors / "snp" / "milan-v2-virtee.vcek.der").read_bytes()
    assert endorsements(table((CertKind.VCEK, vcek))) == (vcek,)


# ---------------------------------------------------------------- configfs-tsm, fake kernel


class FakeTsm(TsmFs):
    """Emulates the kernel's configfs-tsm report directories inside a plain temporary directory.

    mkdir creates the attribute files; writes bump ``generation``; reading ``outblob`` generates
    the report from the current ``inblob`` (as the kernel does); rmdir removes the entry.
    """

    def __init__(
        self,
        *,
        provider: str = "sev_guest",
        outblob: Callable[[bytes], bytes] | None = None,
        auxblob: bytes | None = b"",
        missing: tuple[str, ...] = (),
        races: int = 0,
        fail: dict[str, OSError] | None = None,
    ) -> None:
        self.provider = provider
        self.make_outblob = outblob or (snp_report if provider == "sev_guest" else tdx_quote)
        self.auxblob = auxblob
        self.missing = missing
        self.races = races  # attempts in which another writer rewrites inblob before our read
        self.fail = fail or {}
        self.made: list[Path] = []
        self.removed: list[Path] = []
        self.writes: list[tuple[str, bytes]] = []

    def _maybe_fail(self, op: str) -> None:
        if op in self.fail:
            raise self.fail[op]

    def mkdir(self, path: Path) -> None:
        self._maybe_fail("mkdir")
        super().mkdir(path)
        self.made.append(path)
        files = {"provider": self.provider.encode() + b"\n", "generation": b"0\n", "inblob": b""}
        files["privlevel"] = b""
        if self.auxblob is not None:
            files["auxblob"] = self.auxblob
        for name, data in files.items():
            if name not in self.missing:
                (path / name).write_bytes(data)

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        self.removed.append(path)
        self._maybe_fail("rmdir")
        super().rmdir(path)

    def write(self, path: Path, data: bytes) -> None:
        self._maybe_fail(f"write:{path.name}")
        if path.name == "inblob" and len(data) > 64:
            raise OSError(errno.EINVAL, "too long")
        super().write(path, data)
        self.writes.append((path.name, data))
        self._bump(path.parent)

    def _bump(self, entry: Path) -> None:
        gen = entry / "generation"
        if not gen.exists():
            return
        gen.write_bytes(f"{int(gen.read_bytes()) + 1}\n".encode())

    def read(self, path: Path) -> bytes:
        self._maybe_fail(f"read:{path.name}")
        if path.name == "outblob" and "outblob" not in self.missing:
            entry = path.parent
            if self.races > 0:
                self.races -= 1
                (entry / "inblob").write_bytes(OTHER_RD)
                self._bump(entry)
            path.write_bytes(self.make_outblob((entry / "inblob").read_bytes()))
        return super().read(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "tsm" / "report"
    path.mkdir(parents=True)
    return path


def test_configfs_snp_report_with_certificates(root: Path) -> None:
    fs = FakeTsm(auxblob=table((CertKind.VCEK, VCEK), (CertKind.ASK, ASK), (CertKind.ARK, ARK)))
    provider = ConfigfsTsmProvider(root, fs=fs)
    evidence = provider.get_evidence(RD)
    assert evidence == Evidence(Tee.SNP, snp_report(RD), (VCEK, ASK, ARK), "configfs-tsm")
    assert provider.tee is Tee.SNP
    assert fs.writes == [("inblob", RD)]
    assert fs.made == fs.removed and len(fs.made) == 1
    assert list(root.iterdir()) == []


def test_configfs_tdx_quote_ignores_auxblob(root: Path) -> None:
    fs = FakeTsm(provider="tdx_guest", auxblob=b"garbage that is never parsed")
    evidence = ConfigfsTsmProvider(root, fs=fs).get_evidence(RD)
    assert evidence.tee is Tee.TDX and evidence.blob == tdx_quote(RD) and evidence.endorsements == ()


def test_configfs_missing_auxblob_means_no_endorsements(root: Path) -> None:
    evidence = ConfigfsTsmProvider(root, fs=FakeTsm(auxblob=None)).get_evidence(RD)
    assert evidence.endorsements == ()


def test_configfs_writes_privlevel_and_counts_it(root: Path) -> None:
    fs = FakeTsm()
    ConfigfsTsmProvider(root, privlevel=2, fs=fs).get_evidence(RD)
    assert fs.writes == [("privlevel", b"2"), ("inblob", RD)]


def test_configfs_probe_learns_the_tee_and_cleans_up(root: Path) -> None:
    fs = FakeTsm(provider="tdx_guest")
    provider = ConfigfsTsmProvider(root, fs=fs)
    assert provider.tee is Tee.TDX
    assert len(fs.made) == 1 and fs.made == fs.removed and fs.writes == []


def test_configfs_generation_race_is_retried_in_a_fresh_entry(root: Path) -> None:
    fs = FakeTsm(races=2)
    evidence = ConfigfsTsmProvider(root, attempts=3, fs=fs).get_evidence(RD)
    assert evidence.blob == snp_report(RD)
    assert len(fs.made) == 3 and len(set(fs.made)) == 3 and fs.removed == fs.made


def test_configfs_generation_race_every_time_fails(root: Path) -> None:
    fs = FakeTsm(races=99)
    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, attempts=2, fs=fs).get_evidence(RD)
    assert codes(exc) is NodeCode.PROVIDER_FAILED
    assert len(fs.made) == 2 and fs.removed == fs.made


def test_configfs_foreign_option_write_before_our_read_is_caught(root: Path) -> None:
    # Another process changes privlevel right after our inblob write: the report data would still
    # be ours but the VMPL not, so only the exact write count can tell.
    class OptionWriter(FakeTsm):
        def write(self, path: Path, data: bytes) -> None:
            super().write(path, data)
            if path.name == "inblob":
                (path.parent / "privlevel").write_bytes(b"3")
                self._bump(path.parent)

    fs = OptionWriter()
    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, attempts=2, fs=fs).get_evidence(RD)
    assert codes(exc) is NodeCode.PROVIDER_FAILED
    assert len(fs.made) == 2 and fs.removed == fs.made


def test_configfs_generation_changed_after_the_read_is_caught(root: Path) -> None:
    class LateWriter(FakeTsm):
        def read(self, path: Path) -> bytes:
            data = super().read(path)
            if path.name == "auxblob":
                self._bump(path.parent)
            return data

    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, attempts=1, fs=LateWriter()).get_evidence(RD)
    assert codes(exc) is NodeCode.PROVIDER_FAILED


@pytest.mark.parametrize(
    ("fs", "code"),
    [
        (FakeTsm(outblob=lambda rd: snp_report(rd)[:1000]), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(outblob=lambda rd: b""), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(outblob=lambda rd: snp_report(OTHER_RD)), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(provider="tdx_guest", outblob=snp_report), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(provider="arm_cca_guest"), NodeCode.PROVIDER_UNSUPPORTED),
        (FakeTsm(missing=("outblob",)), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(missing=("generation",)), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(missing=("provider",)), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(auxblob=b"\x01" * 30), NodeCode.PROVIDER_BAD_OUTPUT),
        (FakeTsm(fail={"read:outblob": OSError(errno.EIO, "I/O error")}), NodeCode.PROVIDER_FAILED),
        (FakeTsm(fail={"read:outblob": OSError(errno.EFBIG, "too big")}), NodeCode.PROVIDER_FAILED),
        (FakeTsm(fail={"write:inblob": OSError(errno.EBUSY, "busy")}), NodeCode.PROVIDER_FAILED),
        (FakeTsm(fail={"mkdir": OSError(errno.ENXIO, "no provider")}), NodeCode.PROVIDER_UNAVAILABLE),
        (FakeTsm(fail={"mkdir": PermissionError(errno.EACCES, "denied")}), NodeCode.PROVIDER_UNAVAILABLE),
        (FakeTsm(fail={"mkdir": OSError(errno.ENOMEM, "oom")}), NodeCode.PROVIDER_FAILED),
    ],
    ids=[
        "short-outblob",
        "empty-outblob",
        "foreign-report-data",
        "tdx-provider-snp-blob",
        "unknown-provider",
        "missing-outblob",
        "missing-generation",
        "missing-provider",
        "bad-auxblob",
        "outblob-eio",
        "outblob-efbig",
        "inblob-ebusy",
        "mkdir-enxio",
        "mkdir-eacces",
        "mkdir-enomem",
    ],
)
def test_configfs_bad_kernel_behaviour_gives_typed_errors(root: Path, fs: FakeTsm, code: NodeCode) -> None:
    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, fs=fs).get_evidence(RD)
    assert codes(exc) is code
    assert fs.removed == fs.made  # never leaves an entry behind
    assert exc.value.hint


def test_configfs_generation_not_a_number(root: Path) -> None:
    class Garbled(FakeTsm):
        def _bump(self, entry: Path) -> None:
            (entry / "generation").write_bytes(b"lots\n")

    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, fs=Garbled()).get_evidence(RD)
    assert codes(exc) is NodeCode.PROVIDER_BAD_OUTPUT


def test_configfs_pinned_tee_mismatch(root: Path) -> None:
    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, tee=Tee.TDX, fs=FakeTsm()).get_evidence(RD)
    assert codes(exc) is NodeCode.PROVIDER_BAD_OUTPUT


def test_configfs_cleanup_failure_does_not_hide_the_result(root: Path) -> None:
    fs = FakeTsm(fail={"rmdir": OSError(errno.EBUSY, "busy")})
    assert ConfigfsTsmProvider(root, fs=fs).get_evidence(RD).blob == snp_report(RD)


def test_configfs_missing_root_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(tmp_path / "absent").get_evidence(RD)
    assert codes(exc) is NodeCode.PROVIDER_UNAVAILABLE
    assert "absent" in exc.value.message


@pytest.mark.parametrize("bad", [b"", RD[:63], RD + b"\x00", "x" * 64])
def test_configfs_refuses_bad_report_data_before_touching_the_kernel(root: Path, bad: object) -> None:
    fs = FakeTsm()
    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, fs=fs).get_evidence(bad)  # type: ignore[arg-type]
    assert codes(exc) is NodeCode.REPORT_DATA_INVALID
    assert fs.made == []


@pytest.mark.parametrize("kwargs", [{"privlevel": 4}, {"privlevel": -1}, {"attempts": 0}])
def test_configfs_refuses_bad_options(root: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(NodeError) as exc:
        ConfigfsTsmProvider(root, **kwargs)  # type: ignore[arg-type]
    assert codes(exc) is NodeCode.PROVIDER_UNSUPPORTED


def test_real_tsmfs_round_trip(tmp_path: Path) -> None:
    fs = TsmFs()
    entry = tmp_path / "e"
    fs.mkdir(entry)
    assert fs.is_dir(entry) and (entry.stat().st_mode & 0o777) == 0o700
    (entry / "inblob").touch()
    fs.write(entry / "inblob", RD)
    assert fs.read(entry / "inblob") == RD
    os.unlink(entry / "inblob")
    fs.rmdir(entry)
    assert not entry.exists()


# ---------------------------------------------------------------- simulated


def test_simulated_provider_checks_and_names_the_evidence() -> None:
    seen: list[bytes] = []

    def mint(report_data: bytes) -> Evidence:
        seen.append(report_data)
        return Evidence(Tee.TDX, tdx_quote(report_data), (), "simulator")

    provider = SimulatedProvider(mint, tee=Tee.TDX)
    assert isinstance(provider, EvidenceProvider)
    evidence = provider.get_evidence(RD)
    assert seen == [RD] and evidence.provider == "simulated-tdx" and evidence.blob == tdx_quote(RD)


@pytest.mark.parametrize(
    "mint",
    [
        lambda rd: Evidence(Tee.SNP, snp_report(OTHER_RD)),
        lambda rd: Evidence(Tee.TDX, tdx_quote(rd)),
        snp_report,
    ],
    ids=["foreign-report-data", "wrong-tee", "not-evidence"],
)
def test_simulated_provider_refuses_bad_minter_output(mint: Callable[[bytes], Evidence]) -> None:
    with pytest.raises(NodeError) as exc:
        SimulatedProvider(mint, tee=Tee.SNP).get_evidence(RD)
    assert codes(exc) is NodeCode.PROVIDER_BAD_OUTPUT


# ---------------------------------------------------------------- detection


def devices(tmp_path: Path, *present: str) -> dict[str, Path]:
    out = {"sev-guest": tmp_path / "sev-guest", "tdx-guest": tmp_path / "tdx_guest"}
    for name in present:
        out[name].touch()
    return out


def test_detect_prefers_configfs_and_learns_its_tee(tmp_path: Path, root: Path) -> None:
    provider = detect_provider(
        root=root, devices=devices(tmp_path, "sev-guest"), fs=FakeTsm(provider="tdx_guest")
    )
    assert isinstance(provider, ConfigfsTsmProvider) and provider.tee is Tee.TDX


def test_detect_falls_back_to_sev_guest_when_configfs_has_no_provider(tmp_path: Path, root: Path) -> None:
    fs = FakeTsm(fail={"mkdir": OSError(errno.ENXIO, "no provider")})
    provider = detect_provider(root=root, devices=devices(tmp_path, "sev-guest"), fs=fs)
    assert isinstance(provider, SevGuestProvider) and provider.device == tmp_path / "sev-guest"


def test_detect_nothing_lists_what_was_probed(tmp_path: Path) -> None:
    with pytest.raises(NodeError) as exc:
        detect_provider(root=tmp_path / "none", devices=devices(tmp_path))
    assert codes(exc) is NodeCode.PROVIDER_UNAVAILABLE
    for word in ("configfs-tsm", "sev-guest", "tdx-guest", str(tmp_path / "none")):
        assert word in exc.value.message


def test_detect_never_chooses_tdx_guest_automatically(tmp_path: Path) -> None:
    with pytest.raises(NodeError) as exc:
        detect_provider(root=tmp_path / "none", devices=devices(tmp_path, "tdx-guest"))
    assert codes(exc) is NodeCode.PROVIDER_UNAVAILABLE
    assert "TDREPORT" in exc.value.message


def test_detect_by_name(tmp_path: Path, root: Path) -> None:
    devs = devices(tmp_path)
    assert isinstance(detect_provider(prefer="configfs-tsm", root=root, devices=devs), ConfigfsTsmProvider)
    assert isinstance(detect_provider(prefer="sev-guest", root=root, devices=devs), SevGuestProvider)
    assert isinstance(detect_provider(prefer="tdx-guest", root=root, devices=devs), TdxGuestProvider)

    def mint(rd: bytes) -> Evidence:
        return Evidence(Tee.SNP, snp_report(rd))

    simulated = detect_provider(prefer="simulated-snp", minters={"simulated-snp": mint})
    assert isinstance(simulated, SimulatedProvider) and simulated.tee is Tee.SNP
    assert simulated.get_evidence(RD).provider == "simulated-snp"


def test_detect_simulated_needs_a_minter() -> None:
    with pytest.raises(NodeError) as exc:
        detect_provider(prefer="simulated-tdx")
    assert codes(exc) is NodeCode.PROVIDER_UNAVAILABLE


def test_detect_unknown_name() -> None:
    with pytest.raises(NodeError) as exc:
        detect_provider(prefer="sgx")
    assert codes(exc) is NodeCode.PROVIDER_UNSUPPORTED
    assert "configfs-tsm" in exc.value.message
