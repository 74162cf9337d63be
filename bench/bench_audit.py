"""Offline audit export verification vs plain SHA-256 over the same entry bytes. Not a test.

    .venv/bin/python -m bench.bench_audit [--quick] [--tmpdir DIR]

Builds an export of realistic release.grant/deny entries (quick: 100,000; full: 1,000,000) with a signed
checkpoint every 1,000 entries into a temp file, then, in the same run, times ``verify_export`` over the
file (every check on) and a loop that only SHA-256-hashes each line of the same file. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import rfc8785

from kms.audit.checkpoint import LocalSigner, load_audit_keys
from kms.audit.entry import Decision, Entry, Kind, match_canonical
from kms.audit.export import ExportBuilder, read_lines, write_export
from kms.audit.verify import verify_export

TARGET = 200_000
EVERY = 1_000
NODES = [f"{i:08x}-5b7d-4e8a-9c1f-2b3d4e5f6a7b" for i in range(64)]


def _entry(seq: int, now: datetime) -> bytes:
    """Canonical entry bytes from a template (rfc8785 per entry would dominate the build time)."""
    node = NODES[seq % len(NODES)]
    deny = seq % 10 == 0
    reasons = b'[{"code":"RELEASE_LEASE_EXPIRED","message":"lease expired"}]' if deny else b"[]"
    return (
        b'{"actor":"node:%s","decision":"%s","fields":{"bao_request_id":"%s","claims_digest":"%s",'
        b'"key_name":"dataset-%d","key_version":%d,"lease_expiry":"%s","node_id":"%s","purpose":"read",'
        b'"request_id":"%s"},"kind":"%s","reasons":%s,"seq":%d,"time":"%s"}'
        % (
            node.encode(),
            b"deny" if deny else b"grant",
            os.urandom(16).hex().encode(),
            os.urandom(32).hex().encode(),
            seq % 17,
            1 + seq % 3,
            (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ").encode(),
            node.encode(),
            os.urandom(16).hex().encode(),
            b"release.deny" if deny else b"release.grant",
            reasons,
            seq,
            now.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode(),
        )
    )


def build(path: Path, count: int, signer: LocalSigner) -> int:
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    sample = _entry(0, t0)
    # the template must produce exactly what the entry model and the verifier accept
    assert rfc8785.dumps(json.loads(sample)) == sample
    assert match_canonical(sample) is not None
    assert Entry.decode(sample).kind == Kind.RELEASE_DENY and Entry.decode(sample).decision == Decision.DENY
    builder = ExportBuilder(signer)
    body_path = path.with_suffix(".body")
    size = 0
    with body_path.open("wb") as body:
        for seq in range(count):
            now = t0 + timedelta(microseconds=seq * 997)
            line = builder.add(_entry(seq, now))
            size += len(line)
            body.write(line)
            if seq % EVERY == EVERY - 1 or seq == count - 1:
                body.write(builder.checkpoint(now))
    with path.open("wb") as out, body_path.open("rb") as body:
        write_export(out, builder.header(), body)
    body_path.unlink()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 entries instead of 1,000,000")
    parser.add_argument("--tmpdir", default=None, help="where the export temp file goes")
    args = parser.parse_args()
    count = 100_000 if args.quick else 1_000_000
    signer = LocalSigner(key_id="sovereign-audit")
    keys = load_audit_keys(signer.public_key_bytes())
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = Path(tmp) / "audit.jsonl"
        entry_bytes = build(path, count, signer)

        def hash_only() -> None:
            sha256 = hashlib.sha256
            with path.open("rb") as f:
                for line in read_lines(f):
                    sha256(line).digest()

        hash_only()  # warm the page cache for both
        start = time.perf_counter()
        with path.open("rb") as f:
            report = verify_export(read_lines(f), keys)
        ours_s = time.perf_counter() - start
        assert report.entries == count
        start = time.perf_counter()
        hash_only()
        base_s = time.perf_counter() - start
    ours, baseline = round(count / ours_s), round(count / base_s)
    print(
        json.dumps(
            {
                "work": "audit export verification",
                "entries": count,
                "checkpoints": report.checkpoints,
                "mean_entry_bytes": round(entry_bytes / count),
                "ours": ours,
                "baseline": baseline,
                "unit": "entries/s",
                "ratio": round(ours / baseline, 3),
                "target": TARGET,
                "met": ours >= TARGET,
                "note": "target is absolute entries/s for full verification (grammar + canonical form, seq, "
                "leaf and tree hashes, every checkpoint signature); baseline = one SHA-256 per line of "
                "the same file, read the same way, no checks",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
