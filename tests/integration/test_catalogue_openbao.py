"""The key catalogue over real OpenBao and SQLite: lifecycle, KEK rotation, and no stored plaintext."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kms.domain.catalogue import Catalogue, KeyKind, KeyState
from kms.domain.transit import Transit
from kms.errors import Code, KmsError, OpenBaoError
from kms.sql import open_store
from kms.sql.keys import SqlKeyStore

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def catalogue(db: Path, transit: Transit | None) -> Catalogue:
    return Catalogue(SqlKeyStore(open_store(db)), transit, Clock())


def test_lifecycle_through_approle(fresh_dev: Kms, tmp_path: Path) -> None:
    cat = catalogue(tmp_path / "s.db", fresh_dev.approle())
    created = cat.create("imagenet-2024", "dataset")
    assert created.current_version == 1 and created.state is KeyState.ACTIVE
    v1 = cat.unwrap("imagenet-2024")
    rotated = cat.rotate("imagenet-2024")
    assert rotated.current_version == 2
    v2 = cat.unwrap("imagenet-2024")
    assert v2.version == 2 and v2.plaintext != v1.plaintext
    assert cat.unwrap("imagenet-2024", 1).plaintext == v1.plaintext
    assert cat.unwrap("imagenet-2024", kind=KeyKind.DATASET).version == 2
    with pytest.raises(KmsError) as info:
        cat.unwrap("imagenet-2024", kind=KeyKind.MODEL)
    assert info.value.code is Code.KEY_WRONG_KIND


def test_kek_rotation_rewraps_everything_and_keeps_the_keys(fresh_dev: Kms, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    cat = catalogue(db, fresh_dev.approle())
    for name in ("a", "b"):
        cat.create(name, "model")
    cat.rotate("a")
    before = {(n, v): cat.unwrap(n, v).plaintext for n, v in (("a", 1), ("a", 2), ("b", 1))}
    old_cipher = {(n, v): cat.get(n, v).ciphertext for n, v in before}

    operator = catalogue(db, fresh_dev.admin())
    new_version = operator.rotate_kek()
    assert new_version == 2
    report = cat.rewrap_all(new_version)  # the AppRole policy allows rewrap
    assert (report.rewrapped, report.current, report.failed) == (3, 0, ())
    for (name, version), plaintext in before.items():
        record = cat.get(name, version)
        assert record.kek_version == 2
        assert record.ciphertext.startswith("vault:v2:") and record.ciphertext != old_cipher[(name, version)]
        assert cat.unwrap(name, version).plaintext == plaintext
    assert cat.rewrap_all(new_version).rewrapped == 0  # nothing left below v2


def test_failed_openbao_call_leaves_no_row(fresh_dev: Kms, tmp_path: Path) -> None:
    cat = catalogue(tmp_path / "s.db", fresh_dev.approle())
    cat.create("kept", "dataset")
    fresh_dev.server.stop()
    with pytest.raises(OpenBaoError) as info:
        cat.create("lost", "dataset")
    assert info.value.code is Code.KMS_UNAVAILABLE
    with pytest.raises(OpenBaoError):
        cat.rotate("kept")
    assert [r.name for r in cat.list()] == ["kept"]
    assert cat.describe("kept").current_version == 1


def _forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
    ]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_plaintext_data_key_is_stored_anywhere(raft_kms: Kms, tmp_path: Path) -> None:
    db = tmp_path / "db" / "sovereign.db"
    cat = catalogue(db, raft_kms.approle())
    for i in range(4):
        cat.create(f"key-{i}", "dataset" if i % 2 else "model")
    cat.rotate("key-0")
    plaintexts = [cat.unwrap(r.name, v.version).plaintext for r in cat.list() for v in r.versions]
    assert len(plaintexts) == 5 and len(set(plaintexts)) == 5

    assert raft_kms.server.audit_log is not None
    stored = [*_files(db.parent), *_files(raft_kms.server.data_dir), raft_kms.server.audit_log]
    assert any(p.name.endswith("-wal") for p in stored), "expected a SQLite WAL file to scan"
    assert any(p.name == "raft.db" for p in stored), "expected the OpenBao raft data to scan"
    wrapped = cat.get("key-1").ciphertext.encode()
    assert any(wrapped in p.read_bytes() for p in stored)  # the scan does see what is stored
    for path in stored:
        blob = path.read_bytes()
        for secret in plaintexts:
            for form in _forms(secret):
                assert form not in blob, f"a plaintext data key is stored in {path}"


def test_destroy_wipes_wrapped_material_from_the_file(fresh_dev: Kms, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    cat = catalogue(db, fresh_dev.approle())
    cat.create("gone", "model")
    cat.rotate("gone")
    ciphertexts = [cat.get("gone", v).ciphertext.split(":")[2].encode() for v in (1, 2)]
    cat.destroy("gone")
    files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
    for path in files:
        for c in ciphertexts:
            assert c not in path.read_bytes(), f"wrapped material left in {path.name}"
    record = cat.describe("gone")
    assert record.state is KeyState.DESTROYED and record.current_version == 2
    with pytest.raises(KmsError) as info:
        cat.unwrap("gone", 1)
    assert info.value.code is Code.KEY_DESTROYED
