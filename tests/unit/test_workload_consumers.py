"""What training pipelines read and write, unchanged, through the workload library (real packages):
tarfile streaming over a WebDataset-style shard, numpy.load of .npy/.npz, safetensors checkpoints; and a
training step that leaves no plaintext in its folders or /tmp."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from enclave.workload import MemoryKeySource, create_sealed, open_sealed
from kms.envelope import Code, StreamError, encrypt_stream, read_header

DATASET_KEY, MODEL_KEY = os.urandom(32), os.urandom(32)
CHUNK = 4096


@pytest.fixture
def keys() -> MemoryKeySource:
    source = MemoryKeySource()
    source.add("dataset/train", 1, DATASET_KEY)
    source.add("model/main", 3, MODEL_KEY, purposes=("read", "write"))
    return source


def shard(samples: int, marker: bytes = b"") -> tuple[bytes, dict[str, dict[str, bytes]]]:
    """A WebDataset-style tar built in memory: KEY.jpg (JPEG-framed random bytes) and KEY.cls per sample."""
    out, expected = io.BytesIO(), {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(samples):
            key = f"{i:06d}"
            jpg = b"\xff\xd8\xff\xe0" + marker + os.urandom(1000 + 37 * i) + b"\xff\xd9"
            cls = str(i % 10).encode()
            expected[key] = {"jpg": jpg, "cls": cls}
            for ext, data in (("jpg", jpg), ("cls", cls)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), expected


def seal_as_owner(path: Path, plain: bytes) -> Path:
    """The data owner's side: sealed straight from memory, never written in the clear."""
    with path.open("wb") as out:
        encrypt_stream(DATASET_KEY, plain, out, key_ref="dataset/train@v1", chunk_size=CHUNK)
    return path


def stream_samples(fileobj: io.BufferedIOBase) -> dict[str, dict[str, bytes]]:
    """How WebDataset iterates a shard: tarfile in streaming mode, members grouped by basename."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            stream = tar.extractfile(member)
            assert stream is not None
            key, ext = member.name.rsplit(".", 1)
            samples[key][ext] = stream.read()
    return dict(samples)


def test_tarfile_streams_a_webdataset_shard(tmp_path: Path, keys: MemoryKeySource) -> None:
    plain, expected = shard(40)
    sealed = seal_as_owner(tmp_path / "shard-000000.tar.sealed", plain)
    with open_sealed(sealed, keys=keys) as f:
        assert stream_samples(f) == expected


def test_tarfile_random_access_mode(tmp_path: Path, keys: MemoryKeySource) -> None:
    plain, expected = shard(25)
    sealed = seal_as_owner(tmp_path / "s", plain)
    with open_sealed(sealed, keys=keys) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        names = tar.getnames()
        for name in reversed(names):  # seeks backwards through the shard
            member = tar.extractfile(name)
            assert member is not None
            key, ext = name.rsplit(".", 1)
            assert member.read() == expected[key][ext]


def test_a_tampered_shard_stops_tarfile_at_the_chunk(tmp_path: Path, keys: MemoryKeySource) -> None:
    plain, _ = shard(40)
    sealed = seal_as_owner(tmp_path / "s", plain)
    with sealed.open("rb") as f:
        start = len(read_header(f).raw)
    blob = bytearray(sealed.read_bytes())
    blob[start + 5 * (17 + CHUNK + 16) + 100] ^= 0x40
    sealed.write_bytes(bytes(blob))
    with open_sealed(sealed, keys=keys) as f, pytest.raises(StreamError) as info:
        stream_samples(f)
    assert (info.value.code, info.value.chunk) == (Code.STREAM_CHUNK_TAMPERED, 5)


def test_a_truncated_shard_is_refused_before_tarfile_sees_a_byte(
    tmp_path: Path, keys: MemoryKeySource
) -> None:
    plain, _ = shard(40)
    sealed = seal_as_owner(tmp_path / "s", plain)
    sealed.write_bytes(sealed.read_bytes()[: -(CHUNK // 2)])
    with pytest.raises(StreamError) as info:
        open_sealed(sealed, keys=keys)
    assert info.value.code is Code.STREAM_TRUNCATED and info.value.chunk is not None


def test_numpy_loads_npy_and_npz(tmp_path: Path, keys: MemoryKeySource) -> None:
    rng = np.random.default_rng(7)
    features = rng.standard_normal((300, 17)).astype(np.float32)
    labels = rng.integers(0, 10, 300)
    npy, npz = io.BytesIO(), io.BytesIO()
    np.save(npy, features)
    np.savez_compressed(npz, features=features, labels=labels)
    with open_sealed(seal_as_owner(tmp_path / "f.npy.sealed", npy.getvalue()), keys=keys) as f:
        np.testing.assert_array_equal(np.load(f), features)
    npz_sealed = seal_as_owner(tmp_path / "f.npz.sealed", npz.getvalue())
    with open_sealed(npz_sealed, keys=keys) as f, np.load(f) as archive:  # a zip: read through seek/tell
        np.testing.assert_array_equal(archive["labels"], labels)
        np.testing.assert_array_equal(archive["features"], features)


def test_numpy_saves_npy_and_npz_through_the_writer(tmp_path: Path, keys: MemoryKeySource) -> None:
    weights = np.arange(50_000, dtype=np.int64).reshape(500, 100)
    with create_sealed(tmp_path / "w.npy.sealed", key="model/main", keys=keys, chunk_size=CHUNK) as out:
        np.save(out, weights)
    with create_sealed(tmp_path / "w.npz.sealed", key="model/main", keys=keys, chunk_size=CHUNK) as out:
        np.savez(out, weights=weights, bias=weights[0])  # zipfile on an unseekable stream
    with open_sealed(tmp_path / "w.npy.sealed", keys=keys) as f:
        np.testing.assert_array_equal(np.load(f), weights)
    with open_sealed(tmp_path / "w.npz.sealed", keys=keys) as f, np.load(f) as archive:
        np.testing.assert_array_equal(archive["weights"], weights)
        np.testing.assert_array_equal(archive["bias"], weights[0])


def test_safetensors_checkpoint_round_trip(tmp_path: Path, keys: MemoryKeySource) -> None:
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "layer.0.weight": np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32),
        "layer.0.bias": np.zeros(64, dtype=np.float16),
        "step": np.array([1234], dtype=np.int64),
    }
    path = tmp_path / "ckpt.safetensors.sealed"
    with create_sealed(path, key="model/main", keys=keys, chunk_size=CHUNK) as out:
        out.write(safetensors.numpy.save(tensors, metadata={"format": "np"}))
    with path.open("rb") as f:
        assert read_header(f).key_ref == b"model/main@v3"
    with open_sealed(path, keys=keys) as f:
        loaded = safetensors.numpy.load(f.read())
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype


def _files_holding(roots: list[Path], needles: list[bytes], since: float) -> list[str]:
    found = []
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory) / name
                try:
                    if path.is_symlink() or path.stat().st_mtime < since or path.stat().st_size > 256 << 20:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue  # other users' files, sockets, files removed meanwhile
                found += [f"{path}: {needle[:8].hex()}" for needle in needles if needle in data]
    return found


def test_a_training_step_leaves_no_plaintext_on_disk(tmp_path: Path, keys: MemoryKeySource) -> None:
    since = time.time() - 1
    marker = b"PLAINTEXT-SAMPLE-" + os.urandom(16).hex().encode()
    plain, expected = shard(30, marker=marker)
    work = tmp_path / "work"
    work.mkdir()
    sealed = seal_as_owner(work / "shard.tar.sealed", plain)
    del plain

    # the training step: stream the shard, "train", write a sealed checkpoint
    total = np.zeros(256, dtype=np.float64)
    with open_sealed(sealed, keys=keys) as f:
        for sample in stream_samples(f).values():
            assert marker in sample["jpg"]
            total += np.bincount(np.frombuffer(sample["jpg"], dtype=np.uint8), minlength=256)
    weights: dict[str, np.ndarray[Any, Any]] = {
        "hist": total,
        "marker": np.frombuffer(marker, dtype=np.uint8),
    }
    checkpoint_bytes = safetensors.numpy.save(weights)
    with create_sealed(work / "ckpt.sealed", key="model/main", keys=keys, chunk_size=CHUNK) as out:
        out.write(checkpoint_bytes)
    with open_sealed(work / "ckpt.sealed", keys=keys) as f:
        assert f.read() == checkpoint_bytes

    assert sorted(p.name for p in work.iterdir()) == ["ckpt.sealed", "shard.tar.sealed"]
    needles = [marker, checkpoint_bytes[:64], next(iter(expected.values()))["jpg"][-64:]]
    roots = [tmp_path, Path(os.environ.get("TMPDIR", "/tmp")), Path("/tmp")]
    assert _files_holding(roots, needles, since) == []
    (work / "control").write_bytes(b"x" + marker)  # the scan does find plaintext where there is some
    assert _files_holding([work], needles, since) == [f"{work / 'control'}: {marker[:8].hex()}"]
