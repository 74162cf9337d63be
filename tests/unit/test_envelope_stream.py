"""Sealed stream: round trips, every tamper class with its own code, constant memory."""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.envelope import (
    Code,
    EnvelopeError,
    InvalidInput,
    StreamError,
    decrypt_stream,
    encrypt_stream,
    read_header,
)
from kms.envelope.files import decrypt_file, encrypt_file

KEY = hashlib.sha256(b"stream test key").digest()
OTHER_KEY = hashlib.sha256(b"another key").digest()
CHUNK = 32
REF = "datasets/demo@v1"


def seal(data: bytes, *, key: bytes = KEY, chunk_size: int = CHUNK, key_ref: str = REF) -> bytes:
    out = io.BytesIO()
    encrypt_stream(key, io.BytesIO(data), out, key_ref=key_ref, chunk_size=chunk_size)
    return out.getvalue()


def unseal(blob: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    decrypt_stream(key, io.BytesIO(blob), out)
    return out.getvalue()


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Header and records, using the documented layout (docs/formats.md)."""
    header_len = 114 + int.from_bytes(blob[9:11], "big")
    records, pos = [], header_len
    while pos < len(blob):
        length = int.from_bytes(blob[pos + 13 : pos + 17], "big")
        records.append(blob[pos : pos + 17 + length + 16])
        pos += 17 + length + 16
    return blob[:header_len], records


def code_of(blob: bytes, key: bytes = KEY) -> Code:
    with pytest.raises(StreamError) as info:
        unseal(blob, key)
    return info.value.code


def flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1 :]


def set_flag(record: bytes, flag: int) -> bytes:
    return record[:12] + bytes([flag]) + record[13:]


DATA = os.urandom(CHUNK * 4 + 5)  # five chunks, the last one short


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    blob = seal(data)
    assert unseal(blob) == data
    _, records = split(blob)
    assert len(records) == max(1, -(-size // CHUNK))
    assert [r[12] for r in records] == [0] * (len(records) - 1) + [1]


def test_info_and_header_describe_the_stream() -> None:
    out = io.BytesIO()
    info = encrypt_stream(KEY, io.BytesIO(DATA), out, key_ref=b"\x00opaque", chunk_size=CHUNK)
    assert (info.chunks, info.plaintext_bytes, info.ciphertext_bytes) == (5, len(DATA), len(out.getvalue()))
    src = io.BytesIO(out.getvalue())
    header = read_header(src)  # no key needed: a node learns key_ref before fetching the key
    assert (header.key_ref, header.chunk_size, header.version) == (b"\x00opaque", CHUNK, 1)
    plain = io.BytesIO()
    assert decrypt_stream(KEY, src, plain, header=header) == info
    assert plain.getvalue() == DATA


def test_same_input_seals_differently_each_time() -> None:
    assert seal(DATA) != seal(DATA)


def test_wrong_key() -> None:
    assert code_of(seal(DATA), OTHER_KEY) is Code.STREAM_WRONG_KEY


@pytest.mark.parametrize(
    "offset",
    [5, 8, 11, 11 + len(REF), 11 + len(REF) + 32, 82 + len(REF), 113 + len(REF)],
    ids=["chunk_size", "chunk_size_low", "key_ref", "salt", "nonce_prefix", "tag_first", "tag_last"],
)
def test_header_edits_are_tampering(offset: int) -> None:
    assert code_of(flip(seal(DATA), offset)) is Code.STREAM_HEADER_TAMPERED


def test_key_check_edit_reads_as_wrong_key() -> None:
    assert code_of(flip(seal(DATA), 50 + len(REF))) is Code.STREAM_WRONG_KEY


def test_header_shape_errors() -> None:
    blob = seal(DATA)
    assert code_of(b"") is Code.STREAM_MALFORMED
    assert code_of(b"XXXX" + blob[4:]) is Code.STREAM_MALFORMED
    assert code_of(blob[:4] + b"\x02" + blob[5:]) is Code.STREAM_UNSUPPORTED_VERSION
    assert code_of(blob[:9] + b"\x00\x00" + blob[11:]) is Code.STREAM_MALFORMED
    assert code_of(blob[:5] + (1 << 30).to_bytes(4, "big") + blob[9:]) is Code.STREAM_MALFORMED
    assert code_of(blob[:60]) is Code.STREAM_TRUNCATED


@pytest.mark.parametrize("chunk", [0, 2, 4])
def test_chunk_bit_flip_is_tampering_with_its_index(chunk: int) -> None:
    header, records = split(seal(DATA))
    records[chunk] = flip(records[chunk], 17 + 3)
    with pytest.raises(StreamError) as info:
        unseal(header + b"".join(records))
    assert (info.value.code, info.value.chunk) == (Code.STREAM_CHUNK_TAMPERED, chunk)


def test_tag_flip_is_tampering() -> None:
    blob = seal(DATA)
    assert code_of(flip(blob, len(blob) - 1)) is Code.STREAM_CHUNK_TAMPERED


def test_truncation_at_chunk_boundary() -> None:
    header, records = split(seal(DATA))
    for keep in range(len(records)):
        assert code_of(header + b"".join(records[:keep])) is Code.STREAM_TRUNCATED


def test_truncation_inside_a_chunk() -> None:
    blob = seal(DATA)
    for cut in (1, 16, 17 + 16, 40):
        assert code_of(blob[:-cut]) is Code.STREAM_TRUNCATED


def test_truncation_disguised_as_last_chunk() -> None:
    header, records = split(seal(DATA))
    assert code_of(header + records[0] + set_flag(records[1], 1)) is Code.STREAM_TRUNCATED


@pytest.mark.parametrize("tail", [b"\x00", b"garbage" * 10])
def test_extension_bytes(tail: bytes) -> None:
    assert code_of(seal(DATA) + tail) is Code.STREAM_EXTENDED


def test_extension_with_a_replayed_record() -> None:
    header, records = split(seal(DATA))
    assert code_of(header + b"".join(records) + records[2]) is Code.STREAM_EXTENDED


def test_extension_disguised_by_relabelling_the_last_chunk() -> None:
    header, records = split(seal(os.urandom(CHUNK * 3)))  # exact multiple: last chunk is full size
    records[-1] = set_flag(records[-1], 0)
    assert code_of(header + b"".join(records) + records[0]) is Code.STREAM_EXTENDED


@pytest.mark.parametrize(
    "order", [[1, 0, 2, 3, 4], [0, 2, 1, 3, 4], [0, 1, 3, 4], [0, 1, 1, 2, 3, 4], [4, 0, 1, 2, 3]]
)
def test_reordering_dropping_and_duplicating(order: list[int]) -> None:
    header, records = split(seal(DATA))
    assert code_of(header + b"".join(records[i] for i in order)) is Code.STREAM_REORDERED


def test_chunk_from_another_file_with_the_same_key() -> None:
    header, records = split(seal(DATA))
    _, others = split(seal(DATA))
    records[2] = others[2]
    assert code_of(header + b"".join(records)) is Code.STREAM_CHUNK_FOREIGN
    # Relabelled to look like ours, the foreign chunk simply fails authentication.
    records[2] = records[1][:8] + others[2][8:]
    assert code_of(header + b"".join(records)) is Code.STREAM_CHUNK_TAMPERED


def test_invalid_record_header_is_malformed() -> None:
    header, records = split(seal(DATA))
    assert code_of(header + set_flag(records[0], 7) + b"".join(records[1:])) is Code.STREAM_MALFORMED
    short = records[0][:13] + (CHUNK - 1).to_bytes(4, "big") + records[0][17:]
    assert code_of(header + short + b"".join(records[1:])) is Code.STREAM_MALFORMED


def test_failed_chunk_writes_nothing_of_itself() -> None:
    header, records = split(seal(DATA))
    records[2] = flip(records[2], 30)
    out = io.BytesIO()
    with pytest.raises(StreamError):
        decrypt_stream(KEY, io.BytesIO(header + b"".join(records)), out)
    assert out.getvalue() == DATA[: 2 * CHUNK]  # only the two verified chunks


def test_bad_arguments_are_typed() -> None:
    with pytest.raises(InvalidInput):
        seal(DATA, key=b"short")
    with pytest.raises(InvalidInput):
        seal(DATA, chunk_size=8)
    with pytest.raises(InvalidInput):
        seal(DATA, key_ref="")
    with pytest.raises(InvalidInput):
        encrypt_stream(KEY, io.BytesIO(DATA), io.BytesIO(), key_ref=REF, salt=b"x" * 31)


def test_chunk_counter_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import kms.envelope.stream as stream

    monkeypatch.setattr(stream, "MAX_CHUNKS", 3)
    with pytest.raises(StreamError) as info:
        seal(os.urandom(CHUNK * 3 + 1))
    assert info.value.code is Code.STREAM_TOO_LARGE


class TrickleReader(io.RawIOBase):
    """Returns at most 5 bytes per call, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._src.read(min(5, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_short_reads_are_handled() -> None:
    out = io.BytesIO()
    encrypt_stream(KEY, TrickleReader(DATA), out, key_ref=REF, chunk_size=CHUNK)
    plain = io.BytesIO()
    decrypt_stream(KEY, TrickleReader(out.getvalue()), plain)
    assert plain.getvalue() == DATA


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=1500), chunk_size=st.integers(16, 300))
def test_round_trip_property(data: bytes, chunk_size: int) -> None:
    assert unseal(seal(data, chunk_size=chunk_size)) == data


_SAMPLE = os.urandom(150)
_SAMPLE_BLOB = seal(_SAMPLE)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["flip", "truncate", "insert", "delete"]),
    position=st.integers(0, len(_SAMPLE_BLOB) - 1),
    xor=st.integers(1, 255),
    extra=st.binary(min_size=1, max_size=40),
)
def test_random_corruption_never_yields_plaintext(kind: str, position: int, xor: int, extra: bytes) -> None:
    blob = _SAMPLE_BLOB
    if kind == "flip":
        bad = blob[:position] + bytes([blob[position] ^ xor]) + blob[position + 1 :]
    elif kind == "truncate":
        bad = blob[:position]
    elif kind == "insert":
        bad = blob[:position] + extra + blob[position:]
    else:
        bad = blob[:position] + blob[position + len(extra) :]
    out = io.BytesIO()
    with pytest.raises(EnvelopeError):
        decrypt_stream(KEY, io.BytesIO(bad), out)
    assert _SAMPLE.startswith(out.getvalue())  # at most a verified prefix, never altered bytes


class PatternSource(io.RawIOBase):
    """``size`` bytes generated on the fly from one reused block (nothing accumulates in memory)."""

    def __init__(self, size: int, block: bytes) -> None:
        self._left = size
        self._block = block

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left, len(self._block))
        buffer[:n] = self._block[:n]
        self._left -= n
        return n


class HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def test_memory_stays_constant_for_a_64_mib_stream(tmp_path: Path) -> None:
    size, chunk = 64 << 20, 1 << 20
    block = os.urandom(chunk)
    expected = hashlib.sha256()
    for _ in range(size // chunk):
        expected.update(block)
    sealed_path = tmp_path / "big.sealed"
    tracemalloc.start()
    try:
        with sealed_path.open("wb") as dst:
            encrypt_stream(KEY, PatternSource(size, block), dst, key_ref=REF, chunk_size=chunk)
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = HashSink()
        with sealed_path.open("rb") as src:
            decrypt_stream(KEY, src, sink)
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.size == size and sink.digest.digest() == expected.digest()
    # Encrypt holds three chunk buffers, decrypt two; 64 MiB of data must not show up.
    assert encrypt_peak < 4 * chunk, encrypt_peak
    assert decrypt_peak < 3 * chunk, decrypt_peak


def test_files_round_trip_and_never_leave_partial_output(tmp_path: Path) -> None:
    plain, sealed, out = tmp_path / "plain", tmp_path / "sealed", tmp_path / "out"
    plain.write_bytes(DATA)
    encrypt_file(KEY, plain, sealed, key_ref=REF, chunk_size=CHUNK)
    assert decrypt_file(KEY, sealed, out).plaintext_bytes == len(DATA)
    assert out.read_bytes() == DATA
    assert out.stat().st_mode & 0o077 == 0
    header, records = split(sealed.read_bytes())
    sealed.write_bytes(header + b"".join(records[:-1]))
    out.write_bytes(b"previous")
    with pytest.raises(StreamError) as info:
        decrypt_file(KEY, sealed, out)
    assert info.value.code is Code.STREAM_TRUNCATED
    assert out.read_bytes() == b"previous"
    fresh = tmp_path / "fresh"
    with pytest.raises(StreamError):
        decrypt_file(OTHER_KEY, sealed, fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain", "sealed"]


def test_an_output_path_that_is_not_a_regular_file_is_never_replaced(tmp_path: Path) -> None:
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    plain.write_bytes(DATA)
    encrypt_file(KEY, plain, sealed, key_ref=REF, chunk_size=CHUNK)
    fifo, directory = tmp_path / "fifo", tmp_path / "dir"
    os.mkfifo(fifo)
    directory.mkdir()
    for target in (fifo, directory):
        with pytest.raises(InvalidInput) as info:
            decrypt_file(KEY, sealed, target)
        assert info.value.code is Code.ENVELOPE_INPUT_INVALID and "not a regular file" in info.value.message
        with pytest.raises(InvalidInput):
            encrypt_file(KEY, plain, target, key_ref=REF)
    assert fifo.is_fifo() and directory.is_dir() and not any(directory.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "plain", "sealed"]  # no .partial
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    decrypt_file(KEY, sealed, link)  # a symlink is replaced itself, never written through
    assert not link.is_symlink() and link.read_bytes() == DATA and not (tmp_path / "elsewhere").exists()


def test_error_repr_has_code_and_no_key_material() -> None:
    with pytest.raises(StreamError) as info:
        unseal(seal(DATA), OTHER_KEY)
    text = repr(info.value) + str(info.value) + str(info.value.to_dict())
    assert "STREAM_WRONG_KEY" in text
    assert OTHER_KEY.hex() not in text and KEY.hex() not in text
    assert info.value.hint


# --- I/O paths: every kind of source and sink gives the same bytes and the same verdicts ---------------

SALT, PREFIX = bytes(range(32)), bytes(range(7))


def sealed_fixed(data: bytes, chunk_size: int = CHUNK) -> bytes:
    """Deterministic ciphertext (fixed salt and prefix) through the plain BytesIO path."""
    out = io.BytesIO()
    encrypt_stream(KEY, data, out, key_ref=REF, chunk_size=chunk_size, salt=SALT, nonce_prefix=PREFIX)
    return out.getvalue()


class ReadOnly:
    """Has only ``read`` (no readinto, no fileno, no buffer)."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._src.read(min(size, 3))


def sources(data: bytes, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "source"
    path.write_bytes(b"skipped prefix" + data)
    raw = path.open("rb", buffering=0)
    raw.seek(14)
    buffered = path.open("rb")
    buffered.seek(14)
    at_offset = io.BytesIO(b"skipped prefix" + data)
    at_offset.seek(14)
    return {
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "memoryview-of-u32": memoryview(data + bytes(-len(data) % 4)).cast("I")[: len(data) // 4],
        "BytesIO": at_offset,
        "FileIO": raw,
        "BufferedReader": buffered,
        "trickle": TrickleReader(data),
        "read-only": ReadOnly(data),
    }


@pytest.mark.parametrize("size", [0, 5, CHUNK, 3 * CHUNK + 1])
def test_every_source_kind_encrypts_to_the_same_bytes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    expected = sealed_fixed(data)
    for name, src in sources(data, tmp_path).items():
        plain = data if name != "memoryview-of-u32" else data[: size // 4 * 4]
        out = io.BytesIO()
        encrypt_stream(KEY, src, out, key_ref=REF, chunk_size=CHUNK, salt=SALT, nonce_prefix=PREFIX)  # type: ignore[arg-type]
        assert out.getvalue() == (expected if plain == data else sealed_fixed(plain)), name
        if isinstance(src, io.IOBase) and src.seekable():
            assert src.tell() == 14 + size, f"{name} is left after what was read"
            src.close()


def test_every_source_kind_decrypts(tmp_path: Path) -> None:
    blob = sealed_fixed(DATA)
    for name, src in sources(blob, tmp_path).items():
        if name == "memoryview-of-u32":
            continue
        out = io.BytesIO()
        decrypt_stream(KEY, src, out)  # type: ignore[arg-type]
        assert out.getvalue() == DATA, name
        if isinstance(src, io.IOBase) and src.seekable():
            assert src.tell() == 14 + len(blob), name
            src.close()


def test_header_read_first_then_decrypt_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "sealed"
    path.write_bytes(seal(DATA))
    for buffering in (0, -1):
        with path.open("rb", buffering=buffering) as src:
            header = read_header(src)
            out = io.BytesIO()
            decrypt_stream(KEY, src, out, header=header)
        assert out.getvalue() == DATA


def test_sliding_map_windows_cover_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kms.envelope.stream as stream

    monkeypatch.setattr(stream, "MAP_WINDOW", 0)  # one chunk (+ alignment slack) mapped at a time
    data = os.urandom(3 * 5001 * 7 + 11)  # chunks straddle page and window boundaries
    path = tmp_path / "plain"
    path.write_bytes(data)
    for chunk_size in (5001, 4096, 70000):
        with path.open("rb", buffering=0) as src:
            out = io.BytesIO()
            encrypt_stream(KEY, src, out, key_ref=REF, chunk_size=chunk_size, salt=SALT, nonce_prefix=PREFIX)
        assert out.getvalue() == sealed_fixed(data, chunk_size)


def test_decrypt_never_maps_its_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AES-GCM reads ciphertext twice (GHASH, then CTR): decrypting straight from a shared mapping would
    let a concurrent writer get unauthenticated plaintext out, so ciphertext is always copied first."""

    plain, sealed, out = tmp_path / "plain", tmp_path / "sealed", tmp_path / "out"
    plain.write_bytes(DATA)
    encrypt_file(KEY, plain, sealed, key_ref=REF, chunk_size=CHUNK)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("input was mapped")

    monkeypatch.setattr(mmap, "mmap", refuse)
    decrypt_file(KEY, sealed, out)
    assert out.read_bytes() == DATA
    with pytest.raises(AssertionError, match="input was mapped"):
        encrypt_file(KEY, plain, tmp_path / "again", key_ref=REF, chunk_size=CHUNK)  # the patch works


def test_decrypt_from_a_shared_mapping_copies_and_works(tmp_path: Path) -> None:
    import kms.envelope.stream as stream

    path = tmp_path / "sealed"
    path.write_bytes(seal(DATA))
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        # Only this process's own memory is decrypted in place; a mapping is copied chunk by chunk.
        assert not stream._private(view)
        assert stream._private(memoryview(bytearray(1))) and stream._private(io.BytesIO())
        out = io.BytesIO()
        decrypt_stream(KEY, view, out)
        view.release()
    assert out.getvalue() == DATA


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "BytesIO", "FileIO", "BufferedReader", "trickle"])
def test_tamper_codes_are_the_same_for_every_source(tmp_path: Path, kind: str) -> None:
    header, records = split(seal(DATA))
    cases = {
        Code.STREAM_TRUNCATED: header + b"".join(records[:3]),
        Code.STREAM_EXTENDED: header + b"".join(records) + b"\x00",
        Code.STREAM_CHUNK_TAMPERED: header + records[0] + flip(records[1], 25) + b"".join(records[2:]),
        Code.STREAM_REORDERED: header + records[1] + records[0] + b"".join(records[2:]),
    }
    for expected, blob in cases.items():
        path = tmp_path / "case"
        path.write_bytes(blob)
        src: object = {
            "bytes": blob,
            "bytearray": bytearray(blob),
            "BytesIO": io.BytesIO(blob),
            "FileIO": path.open("rb", buffering=0),
            "BufferedReader": path.open("rb"),
            "trickle": TrickleReader(blob),
        }[kind]
        out = io.BytesIO()
        with pytest.raises(StreamError) as info:
            decrypt_stream(KEY, src, out)  # type: ignore[arg-type]
        assert info.value.code is expected, (kind, expected)
        assert DATA.startswith(out.getvalue())
        # Nothing of the source stays exported while the error is alive: the caller can reuse it.
        if isinstance(src, bytearray):
            src.extend(b"!")
        elif isinstance(src, io.BytesIO):
            src.write(b"!")
        if isinstance(src, io.IOBase):
            src.close()


def test_failed_chunk_writes_nothing_of_itself_to_a_file(tmp_path: Path) -> None:
    header, records = split(seal(DATA))
    records[2] = flip(records[2], 30)
    sealed, out = tmp_path / "sealed", tmp_path / "out"
    sealed.write_bytes(header + b"".join(records))
    with (
        sealed.open("rb", buffering=0) as src,
        out.open("wb", buffering=0) as dst,
        pytest.raises(StreamError) as info,
    ):
        decrypt_stream(KEY, src, dst)
    assert info.value.code is Code.STREAM_CHUNK_TAMPERED
    assert out.read_bytes() == DATA[: 2 * CHUNK]


class ShortWriter(io.RawIOBase):
    """Accepts at most 7 bytes per call, like a raw stream under pressure."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        part = bytes(data[:7])
        self.data += part
        return len(part)


def test_sinks_get_every_byte_in_order(tmp_path: Path) -> None:
    expected = sealed_fixed(DATA)
    short = ShortWriter()
    encrypt_stream(KEY, DATA, short, key_ref=REF, chunk_size=CHUNK, salt=SALT, nonce_prefix=PREFIX)
    assert bytes(short.data) == expected
    path = tmp_path / "out"
    with path.open("wb") as dst:  # a BufferedWriter already holding bytes: they must come first
        dst.write(b"before")
        encrypt_stream(KEY, DATA, dst, key_ref=REF, chunk_size=CHUNK, salt=SALT, nonce_prefix=PREFIX)
        dst.write(b"after")
    assert path.read_bytes() == b"before" + expected + b"after"
    with open(os.devnull, "wb", buffering=0) as null:
        assert decrypt_stream(KEY, expected, null).plaintext_bytes == len(DATA)


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1])


def test_file_path_memory_stays_constant_for_a_64_mib_file(tmp_path: Path) -> None:
    """Mapped windows count as resident memory: they must be unmapped as encryption moves on."""
    size, chunk = 64 << 20, 1 << 20
    plain, sealed, out = tmp_path / "plain", tmp_path / "sealed", tmp_path / "out"
    block = os.urandom(chunk)
    with plain.open("wb") as dst:
        for _ in range(size // chunk):
            dst.write(block)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    before = _status_kib("VmRSS")
    encrypt_file(KEY, plain, sealed, key_ref=REF, chunk_size=chunk)
    decrypt_file(KEY, sealed, out)
    growth = _status_kib("VmHWM") - before
    assert out.stat().st_size == size
    assert growth < 16 * 1024, f"peak RSS grew by {growth} KiB"
