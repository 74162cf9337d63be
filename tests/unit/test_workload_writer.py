"""create_sealed: a write-only binary file that seals as it goes; the file appears only complete, on
close, and plaintext never reaches the disk (not even the temporary file)."""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.workload import (
    MemoryKeySource,
    SealedWriter,
    WorkloadCode,
    WorkloadError,
    create_sealed,
    open_sealed,
)
from kms.envelope import InvalidInput, decrypt_stream, read_header

KEY_V1, KEY_V2 = os.urandom(32), os.urandom(32)
CHUNK = 64


@pytest.fixture
def keys() -> MemoryKeySource:
    source = MemoryKeySource()
    source.add("model/main", 1, KEY_V1, purposes=("read", "write"))
    source.add("model/main", 2, KEY_V2, purposes=("read", "write"))
    source.add("dataset/train", 1, os.urandom(32))  # read only
    return source


def unseal(path: Path, key: bytes) -> bytes:
    """The sequential decoder of kms.envelope, independent of the writer."""
    out = io.BytesIO()
    with path.open("rb") as src:
        decrypt_stream(key, src, out)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.binary(max_size=3 * CHUNK + 5), max_size=12))
def test_any_sequence_of_writes_seals_the_concatenation(
    tmp_path_factory: pytest.TempPathFactory, writes: list[bytes]
) -> None:
    keys = MemoryKeySource()
    keys.add("model/main", 1, KEY_V1, purposes=("write",))
    path = tmp_path_factory.mktemp("w") / "out.sealed"
    with create_sealed(path, key="model/main", keys=keys, chunk_size=CHUNK) as out:
        for part in writes:
            assert out.write(part) == len(part)
        assert out.tell() == sum(map(len, writes))
    assert unseal(path, KEY_V1) == b"".join(writes)


def test_writes_with_the_latest_write_version(tmp_path: Path, keys: MemoryKeySource) -> None:
    data = os.urandom(5 * CHUNK)
    with create_sealed(tmp_path / "m", key="model/main", keys=keys, chunk_size=CHUNK) as out:
        out.write(memoryview(data)[: 2 * CHUNK])
        out.write(bytearray(data[2 * CHUNK :]))
    with (tmp_path / "m").open("rb") as f:
        assert read_header(f).key_ref == b"model/main@v2"
    assert unseal(tmp_path / "m", KEY_V2) == data
    with open_sealed(tmp_path / "m", keys=keys) as f:
        assert f.read() == data


def test_plaintext_never_reaches_the_disk_while_writing(tmp_path: Path, keys: MemoryKeySource) -> None:
    marker = b"SECRET-WEIGHTS-" + os.urandom(8).hex().encode()
    out = create_sealed(tmp_path / "ckpt", key="model/main", keys=keys, chunk_size=CHUNK)
    assert isinstance(out, SealedWriter) and out.writable() and not out.seekable() and not out.readable()
    for _ in range(20):
        out.write(marker * 3)
        partial = list(tmp_path.iterdir())
        assert [p.name.endswith(".partial") for p in partial] == [True]  # the target appears only on close
        assert marker not in partial[0].read_bytes()
        assert oct(partial[0].stat().st_mode & 0o777) == "0o600"
    out.close()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert marker not in (tmp_path / "ckpt").read_bytes()
    assert unseal(tmp_path / "ckpt", KEY_V2) == marker * 60


def test_an_exception_in_the_block_leaves_the_old_file(tmp_path: Path, keys: MemoryKeySource) -> None:
    target = tmp_path / "ckpt"
    target.write_bytes(b"previous checkpoint")
    with (
        pytest.raises(RuntimeError),
        create_sealed(target, key="model/main", keys=keys, chunk_size=CHUNK) as out,
    ):
        out.write(os.urandom(10 * CHUNK))
        raise RuntimeError("training crashed")
    assert out.closed
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and target.read_bytes() == b"previous checkpoint"


def test_a_writer_dropped_unclosed_is_aborted_not_committed(tmp_path: Path, keys: MemoryKeySource) -> None:
    out = create_sealed(tmp_path / "ckpt", key="model/main", keys=keys, chunk_size=CHUNK)
    out.write(os.urandom(3 * CHUNK))
    del out
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_abort_and_use_after_close(tmp_path: Path, keys: MemoryKeySource) -> None:
    out = create_sealed(tmp_path / "a", key="model/main", keys=keys)
    out.write(b"x")
    out.abort()
    assert list(tmp_path.iterdir()) == []
    out = create_sealed(tmp_path / "b", key="model/main", keys=keys)
    out.close()
    out.close()  # idempotent
    assert unseal(tmp_path / "b", KEY_V2) == b""
    with pytest.raises(ValueError):
        out.write(b"late")
    with pytest.raises(io.UnsupportedOperation):
        create_sealed(tmp_path / "c", key="model/main", keys=keys).fileno()


def test_refusals_are_coded(tmp_path: Path, keys: MemoryKeySource) -> None:
    with pytest.raises(WorkloadError) as info:
        create_sealed(tmp_path / "x", key="dataset/train", keys=keys)  # held for reading only
    assert info.value.code is WorkloadCode.WORKLOAD_KEY_UNAVAILABLE
    (tmp_path / "dir").mkdir()
    with pytest.raises(WorkloadError) as info:
        create_sealed(tmp_path / "dir", key="model/main", keys=keys)
    assert info.value.code is WorkloadCode.WORKLOAD_NOT_A_FILE
    with pytest.raises(InvalidInput):
        create_sealed(tmp_path / "y", key="model/main", keys=keys, chunk_size=3)
    with pytest.raises(WorkloadError) as info:
        keys.add("Bad Name", 1, KEY_V1)
    assert info.value.code is WorkloadCode.WORKLOAD_INPUT_INVALID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]
    assert KEY_V2.hex() not in repr(keys.write_key("model/main")) and "model/main@v2" in repr(keys)
