"""open_sealed: a standard seekable binary file over a sealed stream; random access by chunk, every
failure coded at the chunk that shows it, keys only from a KeySource."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.workload import (
    AGENT_SOCKET_ENV,
    MemoryKeySource,
    SealedReader,
    WorkloadCode,
    WorkloadError,
    open_sealed,
)
from kms.envelope import Code, StreamError, encrypt_stream, read_header
from kms.envelope.files import encrypt_file

CHUNK = 64
RECORD = 17 + CHUNK + 16
KEY = bytes(range(32))
DATA = os.urandom(6 * CHUNK + 9)  # seven chunks, the last one short


def keys(key: bytes = KEY, version: int = 1) -> MemoryKeySource:
    source = MemoryKeySource()
    source.add("dataset/train", version, key)
    return source


def seal(path: Path, data: bytes = DATA, *, chunk: int = CHUNK, key: bytes = KEY) -> Path:
    with path.open("wb") as out:
        encrypt_stream(key, data, out, key_ref="dataset/train@v1", chunk_size=chunk)
    return path


def header_len(path: Path) -> int:
    with path.open("rb") as f:
        return len(read_header(f).raw)


def edit(path: Path, offset: int, value: int | None = None) -> None:
    """Flip one bit at ``offset`` (or set the byte to ``value``)."""
    blob = bytearray(path.read_bytes())
    blob[offset] = blob[offset] ^ 1 if value is None else value
    path.write_bytes(bytes(blob))


def failure(path: Path, *, at: int | None = None) -> StreamError:
    """The StreamError of opening ``path`` (at=None) or of reading the byte at plaintext offset ``at``."""
    with pytest.raises(StreamError) as info, open_sealed(path, keys=keys()) as f:
        if at is not None:
            f.seek(at)
            f.read(1)
    return info.value


def test_is_a_standard_binary_file(tmp_path: Path) -> None:
    with open_sealed(seal(tmp_path / "s"), keys=keys()) as f:
        assert isinstance(f, io.BufferedIOBase)
        assert f.readable() and f.seekable() and not f.writable()
        assert f.read() == DATA and f.read() == b"" and f.tell() == len(DATA)
        assert f.seek(-10, io.SEEK_END) == len(DATA) - 10 and f.read() == DATA[-10:]
        assert f.seek(3) == 3 and f.seek(5, io.SEEK_CUR) == 8 and f.read(4) == DATA[8:12]
        buf = bytearray(CHUNK * 2 + 3)
        f.seek(CHUNK)
        assert f.readinto(buf) == len(buf) and bytes(buf) == DATA[CHUNK : CHUNK + len(buf)]
        assert f.seek(len(DATA) + 100) == len(DATA) + 100 and f.read(5) == b""
        assert f.size == len(DATA) and f.key_ref == "dataset/train@v1"
        with pytest.raises(ValueError):
            f.seek(-1)
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()  # the descriptor holds ciphertext: no library may read it raw
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
    assert f.closed
    with pytest.raises(ValueError):
        f.read()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK])
def test_round_trip_sizes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    with open_sealed(seal(tmp_path / "s", data), keys=keys()) as f:
        assert f.size == size and f.read() == data
        f.seek(0)
        assert b"".join(iter(lambda: f.read(7), b"")) == data


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("seek"), st.integers(-3 * CHUNK, 9 * CHUNK), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("read"), st.integers(-1, 4 * CHUNK), st.just(0)),
        st.tuples(st.just("readinto"), st.integers(0, 4 * CHUNK), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=5 * CHUNK + 20), ops=OPS, chunk=st.sampled_from([16, 17, CHUNK]))
def test_seek_and_read_behave_like_the_plaintext(
    data: bytes, ops: list[tuple[str, int, int]], chunk: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = seal(Path(tmp) / "s", data, chunk=chunk)
        plain = io.BytesIO(data)
        with open_sealed(path, keys=keys()) as sealed:
            for op, n, whence in ops:
                if op == "seek":
                    target = {0: 0, 1: plain.tell(), 2: len(data)}[whence] + n
                    if target < 0:
                        with pytest.raises(ValueError):
                            sealed.seek(n, whence)
                        continue
                    assert sealed.seek(n, whence) == plain.seek(n, whence)
                elif op == "read":
                    assert sealed.read(n) == plain.read(n)
                else:
                    a, b = bytearray(n), bytearray(n)
                    assert sealed.readinto(a) == plain.readinto(b) and a == b
                assert sealed.tell() == plain.tell()


def test_only_the_chunks_touched_are_authenticated(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    edit(path, header_len(path) + 3 * RECORD + 17 + 5)  # a ciphertext byte of chunk 3
    with open_sealed(path, keys=keys()) as f:
        for chunk in (0, 1, 2, 4, 5, 6):  # every other chunk reads fine, in any order
            f.seek(chunk * CHUNK)
            assert f.read(CHUNK) == DATA[chunk * CHUNK : (chunk + 1) * CHUNK]
        f.seek(3 * CHUNK - 2)
        with pytest.raises(StreamError) as info:
            f.read(4)  # spans chunks 2 and 3: nothing is returned
        assert (info.value.code, info.value.chunk) == (Code.STREAM_CHUNK_TAMPERED, 3)
        assert f.tell() == 3 * CHUNK  # chunk 2's bytes were consumed, chunk 3's not


@pytest.mark.parametrize("chunk", range(7))
def test_a_tampered_byte_is_named_by_its_chunk(tmp_path: Path, chunk: int) -> None:
    path = seal(tmp_path / "s")
    edit(path, header_len(path) + chunk * RECORD + 17 + 1)
    error = failure(path, at=chunk * CHUNK + 1) if chunk < 6 else failure(path)  # the last: at open
    assert (error.code, error.chunk) == (Code.STREAM_CHUNK_TAMPERED, chunk)
    assert error.hint and error.to_dict()["code"] == "STREAM_CHUNK_TAMPERED"


def test_a_tampered_tag_and_record_label_are_named(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    edit(path, header_len(path) + 2 * RECORD - 1)  # last tag byte of chunk 1
    assert (failure(path, at=CHUNK).code, failure(path, at=CHUNK).chunk) == (Code.STREAM_CHUNK_TAMPERED, 1)
    path = seal(tmp_path / "t")
    edit(path, header_len(path) + 2 * RECORD + 3)  # stream_id of chunk 2
    assert failure(path, at=2 * CHUNK).code is Code.STREAM_CHUNK_FOREIGN


def test_swapped_chunks_are_reordered(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    start = header_len(path)
    blob = path.read_bytes()
    one, two = blob[start + RECORD : start + 2 * RECORD], blob[start + 2 * RECORD : start + 3 * RECORD]
    path.write_bytes(blob[: start + RECORD] + two + one + blob[start + 3 * RECORD :])
    error = failure(path, at=CHUNK)
    assert (error.code, error.chunk) == (Code.STREAM_REORDERED, 1)


def test_a_tampered_header_fails_at_open(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    edit(path, 6)  # chunk_size
    assert failure(path).code in {Code.STREAM_HEADER_TAMPERED, Code.STREAM_MALFORMED}
    path = seal(tmp_path / "t")
    edit(path, header_len(path) - 1)  # header tag
    assert failure(path).code is Code.STREAM_HEADER_TAMPERED


@pytest.mark.parametrize(
    ("keep", "chunk"),
    [
        (lambda h: h + 6 * RECORD, 6),  # cut at a chunk boundary: chunk 5 says more follow
        (lambda h: h + 6 * RECORD + 20, 6),  # inside the last chunk
        (lambda h: h + 2 * RECORD + 40, 2),  # inside chunk 2
        (lambda h: h, 0),  # header only
        (lambda h: h - 3, None),  # inside the header
    ],
)
def test_a_truncated_file_fails_at_open_with_the_chunk(
    tmp_path: Path, keep: object, chunk: int | None
) -> None:
    path = seal(tmp_path / "s")
    path.write_bytes(path.read_bytes()[: keep(header_len(path))])  # type: ignore[operator]
    error = failure(path)
    assert (error.code, error.chunk) == (Code.STREAM_TRUNCATED, chunk)


def test_appended_bytes_fail_at_open(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    path.write_bytes(path.read_bytes() + b"\0" * 7)
    assert failure(path).code is Code.STREAM_EXTENDED


def test_a_file_changed_after_open_fails_at_the_chunk_read(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    with open_sealed(path, keys=keys()) as f:
        edit(path, header_len(path) + 4 * RECORD + 30)
        f.seek(4 * CHUNK)
        with pytest.raises(StreamError) as info:
            f.read(1)
        assert (info.value.code, info.value.chunk) == (Code.STREAM_CHUNK_TAMPERED, 4)
        with path.open("r+b") as raw:
            raw.truncate(header_len(path) + 3 * RECORD + 10)
        f.seek(3 * CHUNK)
        with pytest.raises(StreamError) as info:
            f.read(1)
        assert (info.value.code, info.value.chunk) == (Code.STREAM_TRUNCATED, 3)


def test_wrong_key_is_coded_and_never_shown(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    wrong = bytes(reversed(KEY))
    with pytest.raises(StreamError) as info:
        open_sealed(path, keys=keys(wrong))
    assert info.value.code is Code.STREAM_WRONG_KEY
    assert wrong.hex() not in str(info.value) and wrong.hex() not in repr(keys(wrong))


def test_a_key_the_source_does_not_hold_is_coded(tmp_path: Path) -> None:
    path = seal(tmp_path / "s")
    with pytest.raises(WorkloadError) as info:
        open_sealed(path, keys=keys(version=2))
    assert (
        info.value.code is WorkloadCode.WORKLOAD_KEY_UNAVAILABLE and "dataset/train v1" in info.value.message
    )
    other = tmp_path / "o"
    with other.open("wb") as out:
        encrypt_stream(KEY, b"x", out, key_ref="not a key name", chunk_size=CHUNK)
    with pytest.raises(WorkloadError) as info:
        open_sealed(other, keys=keys())
    assert info.value.code is WorkloadCode.WORKLOAD_KEY_UNAVAILABLE


def test_without_keys_it_asks_the_agent_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = seal(tmp_path / "s")
    monkeypatch.delenv(AGENT_SOCKET_ENV, raising=False)
    with pytest.raises(WorkloadError) as info:
        open_sealed(path)
    assert info.value.code is WorkloadCode.WORKLOAD_NO_KEY_SOURCE and AGENT_SOCKET_ENV in info.value.message
    monkeypatch.setenv(AGENT_SOCKET_ENV, str(tmp_path / "agent.sock"))
    with pytest.raises(WorkloadError) as info:
        open_sealed(path)
    assert info.value.code is WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE  # no agent listens there


def test_not_a_sealed_stream_or_not_a_regular_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(DATA)
    assert failure(plain).code is Code.STREAM_MALFORMED
    with pytest.raises(WorkloadError) as info:
        open_sealed(tmp_path, keys=keys())
    assert info.value.code is WorkloadCode.WORKLOAD_NOT_A_FILE
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here
    with pytest.raises(WorkloadError) as info:
        open_sealed(fifo, keys=keys())
    assert info.value.code is WorkloadCode.WORKLOAD_NOT_A_FILE
    with pytest.raises(FileNotFoundError):
        open_sealed(tmp_path / "missing", keys=keys())


def test_reads_files_sealed_by_the_file_helpers_with_a_large_chunk(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 77)
    plain = tmp_path / "p"
    plain.write_bytes(data)
    encrypt_file(KEY, plain, tmp_path / "s", key_ref="dataset/train@v1")
    with open_sealed(tmp_path / "s", keys=keys()) as f:
        f.seek((1 << 20) - 5)
        assert f.read(10) == data[(1 << 20) - 5 : (1 << 20) + 5]
        f.seek(0)
        assert f.read() == data


def test_cannot_be_pickled_and_repr_is_public(tmp_path: Path) -> None:
    with open_sealed(seal(tmp_path / "s"), keys=keys()) as f:
        with pytest.raises(TypeError, match="each worker"):
            pickle.dumps(f)
        assert repr(f) == f"SealedReader(name={str(tmp_path / 's')!r}, {len(DATA)} bytes)"
        assert isinstance(f, SealedReader)


def test_a_forked_child_reads_the_inherited_object(tmp_path: Path) -> None:
    with open_sealed(seal(tmp_path / "s"), keys=keys()) as f:
        f.seek(CHUNK)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child reads from where the parent was; explicit offsets, no shared position
            os.close(read)
            ok = f.read(CHUNK) == DATA[CHUNK : 2 * CHUNK]
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.close(read)
        os.waitpid(pid, 0)
        assert f.read(3) == DATA[CHUNK : CHUNK + 3]
