"""A development realm: a real OpenID Connect provider on loopback that serves Keycloak's URL layout.

Used by ``./dev demo`` (an operator signs in for the admin steps) and by the auth tests
(``tests/oidc/provider.py`` wraps it in fixtures). It is NOT a Keycloak and never part of a deployment.

``deploy/dev-realm/keycloak_standin.mjs`` runs oidc-provider (npm, pinned by ``package-lock.json``) with Keycloak's paths
and token shape. Its dependencies are installed by this module with ``npm ci`` into
``var/cache/oidc-standin/<lock hash>/`` (once per lock; ``SOVEREIGN_OIDC_STANDIN_CACHE`` overrides the
folder), never by hand. One provider serves the whole test session (``standin()``); it is stopped when
the interpreter exits.

No node or npm, a failed install or a provider that does not come up raises ``StandinError`` with the
reason and the log tail; the tests' ``keycloak`` fixture turns that into a failure, never a skip.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "deploy" / "dev-realm"
SCRIPT = HERE / "keycloak_standin.mjs"
REALM = "sovereign"
OTHER_REALM = "other"
CLIENT_ID = "sovereign"
START_TIMEOUT = 30.0
INSTALL_TIMEOUT = 300.0


class StandinError(RuntimeError):
    """The Keycloak stand-in could not be installed or started."""


def password_of(username: str) -> str:
    return f"{username}-password"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StandinError(
            f"'{name}' is not on PATH: the Keycloak stand-in (tests/oidc) needs Node.js >= 20.19 and npm; "
            "install them (Debian: apt-get install nodejs npm) and rerun"
        )
    return path


def _cache_root() -> Path:
    override = os.environ.get("SOVEREIGN_OIDC_STANDIN_CACHE")
    return Path(override) if override else REPO / "var" / "cache" / "oidc-standin"


def ensure_installed() -> Path:
    """node_modules for the pinned lock, installed with ``npm ci`` on first use; returns its folder."""
    lock = (HERE / "package-lock.json").read_bytes()
    manifest = (HERE / "package.json").read_bytes()
    digest = hashlib.sha256(manifest + b"\0" + lock).hexdigest()[:16]
    target = _cache_root() / digest
    done = target / ".installed"
    if done.exists():
        return target / "node_modules"
    target.mkdir(parents=True, exist_ok=True)
    npm = _tool("npm")
    _tool("node")
    with (target / ".lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # concurrent sessions install once
        if not done.exists():
            (target / "package.json").write_bytes(manifest)
            (target / "package-lock.json").write_bytes(lock)
            cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"]
            try:
                run = subprocess.run(
                    cmd, cwd=target, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise StandinError(f"npm ci for the Keycloak stand-in timed out in {target}") from exc
            if run.returncode != 0:
                raise StandinError(
                    f"npm ci for the Keycloak stand-in failed (exit {run.returncode}) in {target}:\n"
                    f"{(run.stdout + run.stderr)[-2000:]}"
                )
            done.write_text(digest)
    return target / "node_modules"


def _http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    if not url.startswith("http://127.0.0.1:"):
        raise StandinError(f"the dev realm is only reached on loopback, not {url}")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (loopback http only, checked above)
        url, data=data, headers={"content-type": "application/json"}, method="GET" if data is None else "POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


@dataclass
class Standin:
    """A running stand-in. ``server_url`` is what KeycloakOpenID(server_url=...) takes."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    _stopped: bool = field(default=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_url(self) -> str:
        return f"{self.base}/"

    def issuer(self, realm: str = REALM) -> str:
        return f"{self.base}/realms/{realm}"

    def certs_url(self, realm: str = REALM) -> str:
        return f"{self.issuer(realm)}/protocol/openid-connect/certs"

    def mint(
        self,
        realm: str = REALM,
        *,
        username: str = "alice",
        alg: str = "RS256",
        claims: dict[str, Any] | None = None,
        header: dict[str, Any] | None = None,
        azp: str = CLIENT_ID,
    ) -> str:
        """A Keycloak-shaped token signed by the realm's key with chosen claims (None deletes a claim)."""
        body = {"username": username, "alg": alg, "claims": claims or {}, "header": header or {}, "azp": azp}
        return str(_http_json(f"{self.base}/test/realms/{realm}/mint", body)["token"])

    def approve_device(self, user_code: str, username: str, realm: str = REALM) -> None:
        _http_json(
            f"{self.base}/test/realms/{realm}/device/approve", {"user_code": user_code, "username": username}
        )

    def hits(self, path: str) -> int:
        """How many requests reached ``path`` so far."""
        return int(_http_json(f"{self.base}/test/stats").get(path, 0))

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start() -> Standin:
    """Install if needed, start on a free loopback port and wait until discovery answers."""
    node_modules = ensure_installed()
    node = _tool("node")
    workdir = Path(tempfile.mkdtemp(prefix="sovereign-oidc-"))
    # Node resolves bare ESM imports next to the script, so the script runs beside a node_modules link.
    shutil.copy2(SCRIPT, workdir / SCRIPT.name)
    (workdir / "node_modules").symlink_to(node_modules, target_is_directory=True)
    log = workdir / "standin.log"
    out = workdir / "ready.json"
    with log.open("wb") as err, out.open("wb") as ready:
        process = subprocess.Popen([node, SCRIPT.name], cwd=workdir, stdout=ready, stderr=err)
    deadline = time.monotonic() + START_TIMEOUT
    port = None
    while time.monotonic() < deadline and process.poll() is None:
        line = out.read_text().strip()
        if line:
            port = int(json.loads(line.splitlines()[0])["port"])
            break
        time.sleep(0.05)
    standin = Standin(port or 0, process, workdir, log)
    if port is None:
        tail = standin.log_tail()
        standin.stop()
        state = "exited" if process.returncode is not None else "did not report ready"
        raise StandinError(f"the Keycloak stand-in {state} within {START_TIMEOUT:.0f}s; log tail:\n{tail}")
    try:
        _http_json(f"{standin.issuer()}/.well-known/openid-configuration")
    except OSError as exc:
        tail = standin.log_tail()
        standin.stop()
        raise StandinError(
            f"the Keycloak stand-in does not answer discovery: {exc}; log tail:\n{tail}"
        ) from exc
    return standin


_shared: Standin | None = None


def standin() -> Standin:
    """The session's stand-in, started on first use."""
    global _shared  # noqa: PLW0603 (one provider per test session)
    if _shared is None or _shared.process.poll() is not None:
        _shared = start()
        atexit.register(_shared.stop)
    return _shared
