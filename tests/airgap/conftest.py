"""One offline bundle per test session, built from the working tree with a session release key.
Wheels are cached under var/bundle-cache, so only the first session needs the package index."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from airgap.bundlelib import ROOT, Built

from sovereign.bundle import keys
from sovereign.bundle.build import BuildOptions, build


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("bundle")
    key, pub = keys.generate(work / "keys", "release")
    _, other = keys.generate(work / "keys", "someone-else")
    result = build(
        BuildOptions(
            repo=ROOT,
            out_dir=work / "dist",
            signing_key=keys.load_signing_key(key),
            cache=ROOT / "var" / "bundle-cache",
            from_worktree=True,
        )
    )
    yield Built(result, pub, other)
