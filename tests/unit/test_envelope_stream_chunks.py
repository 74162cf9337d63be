"""Chunk-level sealed-stream access (kms.envelope.stream_chunks): the incremental sealer writes exactly
the bytes of encrypt_stream and of the fixed vectors; the opener reads any record at its position and
finds the authenticated end from the file size, with the sequential decoder's codes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from kms.envelope import Code, InvalidInput, StreamError, decrypt_stream, encrypt_stream, read_header
from kms.envelope.stream_chunks import RECORD_OVERHEAD, ChunkOpener, ChunkSealer

KEY = hashlib.sha256(b"chunk test key").digest()
CHUNK = 32
SALT, PREFIX = bytes(range(32)), bytes(range(7))
VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "envelope" / "stream.json").read_text()
)["vectors"]


def seal_incrementally(sealer: ChunkSealer, data: bytes) -> bytes:
    size = sealer.chunk_size
    out = bytearray(size + 16)
    parts = [sealer.header]
    starts = list(range(0, max(len(data), 1), size))
    for i, start in enumerate(starts):
        record, sealed = sealer.seal(
            memoryview(data[start : start + size]), memoryview(out), last=i == len(starts) - 1
        )
        parts += [bytes(record), bytes(sealed)]
    return b"".join(parts)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_sealer_writes_what_encrypt_stream_writes(size: int) -> None:
    data = bytes((i * 7) % 251 for i in range(size))
    expected = io.BytesIO()
    encrypt_stream(KEY, data, expected, key_ref="ds/x@v1", chunk_size=CHUNK, salt=SALT, nonce_prefix=PREFIX)
    sealer = ChunkSealer(KEY, key_ref="ds/x@v1", chunk_size=CHUNK, salt=SALT, nonce_prefix=PREFIX)
    assert seal_incrementally(sealer, data) == expected.getvalue()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_sealer_reproduces_the_fixed_vectors(vector: dict[str, Any]) -> None:
    sealer = ChunkSealer(
        bytes.fromhex(vector["data_key"]),
        key_ref=vector["key_ref"],
        chunk_size=vector["chunk_size"],
        salt=bytes.fromhex(vector["salt"]),
        nonce_prefix=bytes.fromhex(vector["nonce_prefix"]),
    )
    assert seal_incrementally(sealer, bytes.fromhex(vector["plaintext"])).hex() == vector["ciphertext"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_opener_reads_every_vector_chunk_at_its_offset(vector: dict[str, Any]) -> None:
    blob = bytes.fromhex(vector["ciphertext"])
    plain = bytes.fromhex(vector["plaintext"])
    header = read_header(io.BytesIO(blob))
    opener = ChunkOpener(bytes.fromhex(vector["data_key"]), header)
    out = memoryview(bytearray(header.chunk_size))
    end = opener.find_end(len(blob), lambda off, n: memoryview(blob[off : off + n]), out)
    assert end.plaintext_bytes == len(plain)
    assert bytes(out[: end.last_length]) == plain[end.last_index * header.chunk_size :]
    for index in reversed(range(end.last_index + 1)):  # any order
        offset = opener.layout.offset(index)
        record = opener.open(index, memoryview(blob[offset:]), out, last=index == end.last_index)
        start = index * header.chunk_size
        assert bytes(out[: record.length]) == plain[start : start + record.length]


def test_sealer_refuses_a_short_middle_chunk_and_anything_after_the_last() -> None:
    sealer = ChunkSealer(KEY, key_ref="ds/x@v1", chunk_size=CHUNK)
    out = memoryview(bytearray(CHUNK + 16))
    with pytest.raises(InvalidInput):
        sealer.seal(memoryview(bytes(CHUNK - 1)), out, last=False)
    sealer.seal(memoryview(bytes(CHUNK)), out, last=False)
    with pytest.raises(InvalidInput):
        sealer.seal(memoryview(b""), out, last=True)  # empty only as the only chunk
    sealer.seal(memoryview(b"x"), out, last=True)
    with pytest.raises(InvalidInput):
        sealer.seal(memoryview(b"x"), out, last=True)


def _end_code(blob: bytes) -> tuple[Code, int | None]:
    opener = ChunkOpener(KEY, read_header(io.BytesIO(blob)))
    with pytest.raises(StreamError) as info:
        opener.find_end(
            len(blob), lambda off, n: memoryview(blob[off : off + n]), memoryview(bytearray(CHUNK))
        )
    return info.value.code, info.value.chunk


def _sequential_code(blob: bytes) -> Code:
    with pytest.raises(StreamError) as info:
        decrypt_stream(KEY, blob, io.BytesIO())
    return info.value.code


DATA = bytes(range(3 * CHUNK + 5))  # four chunks, the last one short


def _sealed(data: bytes = DATA) -> bytes:
    out = io.BytesIO()
    encrypt_stream(KEY, data, out, key_ref="ds/x@v1", chunk_size=CHUNK)
    return out.getvalue()


@pytest.mark.parametrize(
    ("cut", "code", "chunk"),
    [
        (-1, Code.STREAM_TRUNCATED, 3),  # inside the last chunk
        (-(5 + RECORD_OVERHEAD), Code.STREAM_TRUNCATED, 3),  # at the boundary: chunk 2 says more follow
        (-(5 + RECORD_OVERHEAD) - 10, Code.STREAM_TRUNCATED, 2),
        (-(5 + RECORD_OVERHEAD) - 40, Code.STREAM_TRUNCATED, 2),  # a tail shorter than a record
    ],
)
def test_find_end_names_a_cut_like_the_sequential_decoder(cut: int, code: Code, chunk: int) -> None:
    blob = _sealed()[:cut]
    assert _end_code(blob) == (code, chunk)
    assert _sequential_code(blob) is code


@pytest.mark.parametrize("extra", [1, RECORD_OVERHEAD - 1, RECORD_OVERHEAD, RECORD_OVERHEAD + CHUNK + 3])
def test_find_end_names_appended_bytes_like_the_sequential_decoder(extra: int) -> None:
    blob = _sealed() + bytes(extra)
    assert _end_code(blob)[0] is Code.STREAM_EXTENDED
    assert _sequential_code(blob) is Code.STREAM_EXTENDED


def test_more_than_a_record_appended_is_refused_under_the_code_its_tail_shows() -> None:
    """Only the record before the tail is tried as the real end (docs/formats.md 4.6): longer garbage is
    named by what it looks like, and still never opens."""
    assert _end_code(_sealed() + bytes(500))[0] is Code.STREAM_MALFORMED
    blob = _sealed()
    header_len = len(read_header(io.BytesIO(blob)).raw)
    own_records_again = blob + blob[header_len : header_len + 2 * (RECORD_OVERHEAD + CHUNK)]
    assert _end_code(own_records_again)[0] in set(Code)


def test_a_full_stream_cut_at_every_length_never_opens() -> None:
    blob = _sealed()
    header_len = len(read_header(io.BytesIO(blob)).raw)
    for length in range(header_len, len(blob)):
        assert _end_code(blob[:length])[0] is Code.STREAM_TRUNCATED, length
