"""Key catalogue rules over a temporary SQLite store and a fake transit (no OpenBao needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.domain.catalogue import Catalogue, KeyKind, KeyState, parse_kind, summary_rows, validate_name
from kms.domain.transit import PublicKey, Signature, Unwrapped, WrappedKey
from kms.errors import CatalogueError, Code, KmsError, OpenBaoError
from kms.sql import open_store
from kms.sql.keys import SqlKeyStore


class FakeTransit:
    """Wraps by remembering: ciphertext -> plaintext. KEK version is a counter; can be told to fail."""

    kek = "sovereign-kek"

    def __init__(self) -> None:
        self.kek_version = 1
        self.keys: dict[str, bytes] = {}
        self.fail: OpenBaoError | None = None
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail

    def _wrap(self, plaintext: bytes) -> WrappedKey:
        ciphertext = f"vault:v{self.kek_version}:{os.urandom(16).hex()}"
        self.keys[ciphertext] = plaintext
        return WrappedKey(ciphertext, self.kek_version)

    def generate_wrapped_data_key(self, kek: str | None = None) -> WrappedKey:
        self._check()
        return self._wrap(os.urandom(32))

    def unwrap(self, ciphertext: str, kek: str | None = None) -> Unwrapped:
        self._check()
        return Unwrapped(self.keys[ciphertext], f"req-{self.calls}")

    def unwrap_batch(
        self, ciphertexts: Sequence[str], kek: str | None = None
    ) -> list[Unwrapped | OpenBaoError]:
        return [self.unwrap(c) for c in ciphertexts]

    def rewrap(self, ciphertext: str, kek: str | None = None) -> WrappedKey:
        self._check()
        return self._wrap(self.keys[ciphertext])

    def rotate_kek(self) -> int:
        self.kek_version += 1
        return self.kek_version

    def sign(self, data: bytes) -> Signature:
        raise NotImplementedError

    def verify(self, data: bytes, signature: Signature) -> None:
        raise NotImplementedError

    def public_key(self, version: int | None = None) -> PublicKey:
        raise NotImplementedError

    def key_info(self, name: str | None = None):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: int = 60) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def transit() -> FakeTransit:
    return FakeTransit()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def cat(db: Path, transit: FakeTransit, clock: Clock) -> Catalogue:
    return Catalogue(SqlKeyStore(open_store(db)), transit, clock)


def code_of(fn, *args, **kwargs) -> Code:  # type: ignore[no-untyped-def]
    with pytest.raises(KmsError) as info:
        fn(*args, **kwargs)
    return info.value.code


@pytest.mark.parametrize(
    "name",
    ["a", "0", "imagenet-2024", "llama.v3_weights", "a" * 128, "x-._", "dataset/imagenet", "model/llama/v3"],
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "-a",
        ".a",
        "_a",
        "a b",
        "a" * 129,
        "a\n",
        "ä",
        "a:b",
        "../etc",
        "a//b",
        "a/",
        "/a",
        "a/./b",
        "a/../b",
        "a/b/c/d/e",
        "a/" + "b" * 127,
    ],
)
def test_invalid_names(name: str) -> None:
    assert code_of(validate_name, name) is Code.KEY_NAME_INVALID


@given(st.text(max_size=140))
def test_name_validation_never_crashes(name: str) -> None:
    try:
        validate_name(name)
    except CatalogueError as err:
        assert err.code is Code.KEY_NAME_INVALID
        assert len(err.message) < 90  # long input is not echoed in full


def test_kinds() -> None:
    assert parse_kind("dataset") is KeyKind.DATASET and parse_kind("model") is KeyKind.MODEL
    assert code_of(parse_kind, "weights") is Code.KEY_WRONG_KIND


def test_create_stores_only_the_wrapped_form(
    cat: Catalogue, transit: FakeTransit, db: Path, clock: Clock
) -> None:
    record = cat.create("ds", "dataset")
    assert (record.kind, record.state, record.current_version) == (KeyKind.DATASET, KeyState.ACTIVE, 1)
    assert record.created_at == clock.now
    wrapped = cat.get("ds")
    assert wrapped.ciphertext in transit.keys and wrapped.kek_version == 1
    plaintext = transit.keys[wrapped.ciphertext]
    blobs = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert wrapped.ciphertext.encode() in blobs
    assert plaintext not in blobs and plaintext.hex().encode() not in blobs


def test_failed_kms_call_leaves_no_row(cat: Catalogue, transit: FakeTransit) -> None:
    transit.fail = OpenBaoError("down", code=Code.KMS_UNAVAILABLE)
    assert code_of(cat.create, "ds", "dataset") is Code.KMS_UNAVAILABLE
    assert cat.list() == []
    assert code_of(cat.describe, "ds") is Code.KEY_NOT_FOUND


def test_bad_input_is_refused_before_calling_the_kms(cat: Catalogue, transit: FakeTransit) -> None:
    assert code_of(cat.create, "Bad", "dataset") is Code.KEY_NAME_INVALID
    assert code_of(cat.create, "ok", "weights") is Code.KEY_WRONG_KIND
    cat.create("ok", "model")
    calls = transit.calls
    assert code_of(cat.create, "ok", "dataset") is Code.KEY_EXISTS
    assert transit.calls == calls


def test_rotate_adds_versions_and_old_ones_stay_usable(cat: Catalogue, clock: Clock) -> None:
    cat.create("m", "model")
    v1 = cat.unwrap("m")
    clock.tick()
    record = cat.rotate("m")
    assert record.current_version == 2 and record.updated_at == clock.now
    assert [v.version for v in record.versions] == [1, 2]
    v2 = cat.unwrap("m")
    assert v2.version == 2 and v2.plaintext != v1.plaintext
    assert cat.unwrap("m", 1).plaintext == v1.plaintext
    assert code_of(cat.unwrap, "m", 3) is Code.KEY_VERSION_NOT_FOUND


def test_unwrap_returns_request_id_and_hides_plaintext(cat: Catalogue) -> None:
    cat.create("m", "model")
    key = cat.unwrap("m", kind=KeyKind.MODEL)
    assert key.request_id.startswith("req-") and len(key.plaintext) == 32
    assert key.plaintext.hex() not in repr(key) and repr(key.plaintext) not in repr(key)
    assert code_of(cat.unwrap, "m", kind=KeyKind.DATASET) is Code.KEY_WRONG_KIND


def test_unwrap_refuses_a_non_data_key(cat: Catalogue, transit: FakeTransit) -> None:
    cat.create("m", "model")
    transit.keys[cat.get("m").ciphertext] = b"short"
    assert code_of(cat.unwrap, "m") is Code.KMS_BAD_RESPONSE


def test_disable_enable(cat: Catalogue, transit: FakeTransit) -> None:
    cat.create("d", "dataset")
    assert cat.disable("d").state is KeyState.DISABLED
    calls = transit.calls
    assert code_of(cat.unwrap, "d") is Code.KEY_DISABLED
    assert code_of(cat.get, "d") is Code.KEY_DISABLED
    assert code_of(cat.rotate, "d") is Code.KEY_DISABLED
    assert transit.calls == calls  # refused before OpenBao is asked
    assert cat.enable("d").state is KeyState.ACTIVE
    assert len(cat.unwrap("d").plaintext) == 32


def test_destroy_wipes_material_and_keeps_metadata(cat: Catalogue, db: Path, clock: Clock) -> None:
    cat.create("x", "model")
    cat.rotate("x")
    ciphertexts = [cat.get("x", v).ciphertext for v in (1, 2)]
    clock.tick()
    record = cat.destroy("x")
    assert record.state is KeyState.DESTROYED and record.destroyed_at == clock.now
    assert all(v.ciphertext is None for v in record.versions) and record.current_version == 2
    for fn in (cat.unwrap, cat.get, cat.rotate, cat.enable, cat.disable, cat.destroy):
        assert code_of(fn, "x") is Code.KEY_DESTROYED
    assert code_of(cat.create, "x", "model") is Code.KEY_EXISTS  # names are never reused
    for path in db.parent.iterdir():
        for c in ciphertexts:
            assert c.encode() not in path.read_bytes(), path.name


def test_unknown_key(cat: Catalogue) -> None:
    for fn in (cat.describe, cat.rotate, cat.unwrap, cat.disable, cat.enable, cat.destroy):
        assert code_of(fn, "nope") is Code.KEY_NOT_FOUND


def test_rewrap_all_after_kek_rotation(cat: Catalogue, transit: FakeTransit, clock: Clock) -> None:
    for name in ("a", "b", "c"):
        cat.create(name, "dataset")
    cat.rotate("a")
    cat.destroy("c")
    before = {(n, v): cat.unwrap(n, v).plaintext for n, v in (("a", 1), ("a", 2), ("b", 1))}
    assert cat.rotate_kek() == 2
    clock.tick()
    report = cat.rewrap_all(2)
    assert (report.rewrapped, report.current, report.failed) == (3, 0, ())
    for (name, version), plaintext in before.items():
        assert cat.get(name, version).kek_version == 2
        assert cat.unwrap(name, version).plaintext == plaintext
        assert cat.describe(name).version(version).rewrapped_at == clock.now
    assert cat.rewrap_all(2).rewrapped == 0


def test_rewrap_all_stops_when_openbao_is_down(cat: Catalogue, transit: FakeTransit) -> None:
    cat.create("a", "dataset")
    transit.rotate_kek()
    transit.fail = OpenBaoError("down", code=Code.KMS_UNAVAILABLE)
    assert code_of(cat.rewrap_all, 2) is Code.KMS_UNAVAILABLE
    transit.fail = None
    assert cat.rewrap_all(2).rewrapped == 1


def test_catalogue_without_openbao_serves_metadata(db: Path, clock: Clock) -> None:
    cat = Catalogue(SqlKeyStore(open_store(db)), None, clock)
    assert cat.list() == []
    assert code_of(cat.create, "a", "dataset") is Code.KMS_CONFIG_INVALID


def test_list_and_summary(cat: Catalogue) -> None:
    cat.create("b", "model")
    cat.create("a", "dataset")
    cat.rotate("b")
    records = cat.list()
    assert [r.name for r in records] == ["a", "b"]
    rows = summary_rows(records)
    assert [(r["name"], r["kind"], r["version"], r["kek_version"]) for r in rows] == [
        ("a", "dataset", 1, 1),
        ("b", "model", 2, 1),
    ]
    assert "ciphertext" not in str(records[0].to_dict())
    assert "vault:" not in repr(records)
