"""The web console in a real browser (Chromium + Selenium) against the real server, OpenBao and the dev
realm: sign-in by authorization code + PKCE, role gating, inert markup, CSRF, in-browser proof checks,
and the two-person rule from the pending-changes page. Screenshots of each page go to the test's
temporary folder (set SOVEREIGN_CONSOLE_SHOTS=DIR to keep them)."""

from __future__ import annotations

import os
import sqlite3
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from browser import chromium
from e2e.conftest import KIND
from e2e.node_client import NodeClient
from e2e.operators import StandinRealm
from e2e.world import KEYS, SNP_MEASUREMENT, Bao, ServerProcess, prepare_inputs, server_policy
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient
from enclave.identity import NodeIdentity
from enclave.providers.gpu import SimulatedGpus
from enclave.providers.simulated import simulated_snp
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc

EVIL_NAME = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, bao: Bao, realm: StandinRealm
) -> Iterator[tuple[ServerProcess, str]]:
    workdir = tmp_path_factory.mktemp("console-server")
    # with simulated NVIDIA roots and collateral, so a node with GPUs can register (its page shows them)
    gpu_sim = GpuSimulator(datetime.now(UTC))
    inputs = prepare_inputs(workdir, pki, datetime.now(UTC), server_policy(), gpus=gpu_sim)
    proc = ServerProcess(workdir, inputs, bao, realm, extra=["--console-listen", "127.0.0.1:0"]).start()
    try:
        with proc.admin_channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for name, kind in KEYS.items():
                admin.CreateKey(admin_pb2.CreateKeyRequest(name=name, kind=KIND[kind]))
            # Free text an operator (or an attacker who is one) can put into the ledger.
            admin.CreateKey(admin_pb2.CreateKeyRequest(name="scratch/evil", kind=KIND["dataset"]))
            admin.DisableKey(admin_pb2.DisableKeyRequest(name="scratch/evil", reason=EVIL_NAME))
        url = proc.announced("console on ")
        node = NodeClient(
            proc.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="trainer-console"
        )
        node.register(requested_groups=["trainers"])
        node.release("dataset/train")
        assert proc.ca is not None
        with ControlPlaneClient(f"127.0.0.1:{proc.port}", ca_pem=proc.ca.read_bytes(), timeout=15) as client:
            gpu_node = NodeAgent(
                client, simulated_snp(pki, measurement=SNP_MEASUREMENT), NodeIdentity.generate(),
                node_name="gpu-console", groups=("trainers",), gpus=SimulatedGpus(gpu_sim, 2, seed="console"),
            )  # fmt: skip
            gpu_node.require_attested(gpu_node.register())
        yield proc, url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = os.environ.get("SOVEREIGN_CONSOLE_SHOTS")
    folder = Path(keep) if keep else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: WebDriver, url: str, username: str, path: str = "/") -> None:
    driver.get(url + path)
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "username"))
    assert "/interaction/" in driver.current_url  # the realm's own login page
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(f"{username}-password")
    driver.find_element(By.ID, "kc-login").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "who"))
    assert driver.find_element(By.ID, "who").text == username


def wait_for(driver: WebDriver, element_id: str) -> str:
    """The text of ``element_id`` once the page that has it loaded (clicks do not wait for navigations)."""
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, element_id))
    return str(driver.find_element(By.ID, element_id).text)


def shot(driver: WebDriver, shots: Path, name: str) -> None:
    assert driver.save_screenshot(str(shots / f"{name}.png"))


def test_sign_in_and_every_page(console: tuple[ServerProcess, str], browser: WebDriver, shots: Path) -> None:
    _, url = console
    sign_in(browser, url, "alice")
    assert browser.current_url.rstrip("/") == url
    # The overview's gauges are read at most every 5 s: reload until the registration shows.
    WebDriverWait(browser, 20, 1).until(lambda d: d.refresh() or d.find_elements(By.ID, "nodes-attested"))
    assert browser.find_element(By.ID, "nodes-attested").text == "2"
    assert browser.find_element(By.ID, "openbao").text == "active and unsealed"
    shot(browser, shots, "overview")
    cookie = browser.get_cookie("__Host-sovereign-console")
    assert cookie is not None and cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    for path, marker in (("/nodes", "nodes"), ("/keys", "keys"), ("/pending", "changes")):
        browser.get(url + path)
        assert browser.find_elements(By.ID, marker), browser.page_source[:2000]
        shot(browser, shots, path.strip("/"))
    # a node page: the claims the server verified, and no GPU table for a node without GPUs
    browser.get(url + "/nodes")
    browser.find_element(By.LINK_TEXT, "trainer-console").click()
    assert wait_for(browser, "node-name") == "trainer-console"
    assert SNP_MEASUREMENT.hex() in browser.page_source and not browser.find_elements(By.ID, "gpus")
    shot(browser, shots, "node")
    browser.get(url + "/nodes")
    browser.find_element(By.LINK_TEXT, "gpu-console").click()
    assert wait_for(browser, "node-name") == "gpu-console"
    rows = browser.find_elements(By.CSS_SELECTOR, "#gpus tr")[1:]
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert [(c[0], c[4], c[7]) for c in cells] == [("HOPPER", "success", "yes")] * 2, cells
    assert len({c[3] for c in cells}) == 2 and all(c[1] and c[2] and c[3] for c in cells)  # two devices
    shot(browser, shots, "gpu-node")
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, "signed-out")
    browser.get(url + "/nodes")
    assert "/interaction/" in browser.current_url  # signed out: back to the realm


def test_markup_in_a_ledger_field_is_inert(console: tuple[ServerProcess, str], browser: WebDriver) -> None:
    _, url = console
    sign_in(browser, url, "carol", "/ledger?key=scratch/evil")
    link = browser.find_elements(By.CSS_SELECTOR, "#entries a")
    assert link, browser.page_source[:2000]
    link[-1].click()
    assert EVIL_NAME in wait_for(browser, "canonical")
    assert browser.execute_script("return window.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")  # the <img> stayed text


def test_an_auditor_cannot_open_admin_pages(console: tuple[ServerProcess, str], browser: WebDriver) -> None:
    _, url = console
    sign_in(browser, url, "carol")
    nav = browser.find_element(By.TAG_NAME, "nav").text
    assert "Ledger" in nav and "Nodes" not in nav and "Pending" not in nav
    for path in ("/nodes", "/keys", "/pending"):
        browser.get(url + path)
        assert browser.find_element(By.ID, "error-code").text == "AUTH_ROLE_MISSING", path
    # The endpoint itself, called directly from the signed-in page with a valid CSRF token: refused.
    status = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const csrf = document.querySelector('input[name=csrf]').value;
        fetch('/pending/anything/approve', {method: 'POST', body: new URLSearchParams({csrf})})
          .then(r => done(r.status));"""
    )
    assert status == 403


def test_ledger_proof_verifies_in_the_browser_and_a_tampered_entry_is_red(
    console: tuple[ServerProcess, str], browser: WebDriver, shots: Path
) -> None:
    server, url = console
    sign_in(browser, url, "carol", "/ledger?decision=grant")
    shot(browser, shots, "ledger")
    first = browser.find_element(By.CSS_SELECTOR, "#entries a")
    sequence = int(first.text)
    first.click()
    WebDriverWait(browser, 20).until(lambda d: "checking" not in d.find_element(By.ID, "verdict").text)
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.text.startswith("VERIFIED") and "ok" in verdict.get_attribute("class"), verdict.text
    shot(browser, shots, "entry-verified")
    # Tamper with the stored tree the way an attacker with the database would: the sibling hash the
    # server puts first in this entry's audit path.
    sequence, sibling = 2, 3
    with sqlite3.connect(server.db) as db:
        (good,) = db.execute("SELECT leaf_hash FROM audit_entries WHERE seq = ?", (sibling,)).fetchone()
        bad = bytes([good[0] ^ 1]) + good[1:]
        db.execute("UPDATE audit_entries SET leaf_hash = ? WHERE seq = ?", (bad, sibling))
    try:
        browser.get(f"{url}/ledger/{sequence}")
        WebDriverWait(browser, 20).until(lambda d: "checking" not in d.find_element(By.ID, "verdict").text)
        verdict = browser.find_element(By.ID, "verdict")
        assert verdict.text.startswith("NOT VERIFIED") and "bad" in verdict.get_attribute("class"), (
            verdict.text
        )
        shot(browser, shots, "entry-tampered")
    finally:
        with sqlite3.connect(server.db) as db:
            db.execute("UPDATE audit_entries SET leaf_hash = ? WHERE seq = ?", (good, sibling))


def _post(url: str, path: str, cookie: str, origin: str | None, body: bytes) -> int:
    request = urllib.request.Request(url + path, data=body, method="POST")
    request.add_header("Cookie", cookie)
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if origin is not None:
        request.add_header("Origin", origin)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_cross_site_forms_are_refused(console: tuple[ServerProcess, str], browser: WebDriver) -> None:
    _, url = console
    sign_in(browser, url, "alice", "/pending")
    session = browser.get_cookie("__Host-sovereign-console")
    assert session is not None
    cookie = f"__Host-sovereign-console={session['value']}"
    csrf = browser.find_element(By.NAME, "csrf").get_attribute("value")
    body = f"csrf={csrf}&comment=x".encode()
    assert _post(url, "/pending/x/reject", cookie, "https://evil.example", body) == 403
    assert _post(url, "/pending/x/reject", cookie, None, body) == 403
    assert _post(url, "/pending/x/reject", cookie, url, b"comment=x") == 403  # no CSRF token
    assert _post(url, "/logout", cookie, "https://evil.example", f"csrf={csrf}".encode()) == 403
    # A real cross-site page posting a form: the browser does not even send the session cookie.
    browser.get(
        "data:text/html,<form id=f method=post action='"
        + url
        + "/logout'><input name=csrf value="
        + csrf
        + "></form><script>document.getElementById('f').submit()</script>"
    )
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "error-code"))
    assert browser.find_element(By.ID, "error-code").text in ("CONSOLE_NOT_SIGNED_IN", "CONSOLE_CSRF")
    browser.get(url + "/pending")
    assert (
        browser.find_element(By.ID, "who").text == "alice"
    )  # still signed in: the forged logout did nothing


def test_approve_as_second_person(
    console: tuple[ServerProcess, str], browser: WebDriver, shots: Path
) -> None:
    server, url = console
    with server.admin_channel("alice") as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        admin.CreateKey(admin_pb2.CreateKeyRequest(name="scratch/console", kind=KIND["dataset"]))
        held = admin.DestroyKey(
            admin_pb2.DestroyKeyRequest(name="scratch/console", confirm_name="scratch/console", reason="test")
        )
    change_id = held.pending_change.change_id
    assert change_id
    sign_in(browser, url, "alice", "/pending")
    browser.find_element(By.CSS_SELECTOR, f"form[action='/pending/{change_id}/approve'] button").click()
    assert wait_for(browser, "error-code") == "AUTH_SAME_APPROVER"
    browser.get(url + "/keys")
    assert "scratch/console" in browser.find_element(By.ID, "keys").text  # refused: nothing applied
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, "signed-out")
    sign_in(browser, url, "bob", "/pending")
    shot(browser, shots, "pending")
    browser.find_element(
        By.CSS_SELECTOR, f"form[action='/pending/{change_id}/approve'] input[name=comment]"
    ).send_keys("ok")
    browser.find_element(By.CSS_SELECTOR, f"form[action='/pending/{change_id}/approve'] button").click()
    # Back on the pending list once the approval was applied: the change has left it (the list read
    # while the page is being replaced goes stale: read it again).
    WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: (
            d.current_url.endswith("/pending") and change_id not in d.find_element(By.ID, "changes").text
        )
    )
    browser.get(url + "/pending?state=applied")
    assert change_id in browser.find_element(By.ID, "changes").text
    browser.get(url + "/keys")
    assert "scratch/console" not in browser.find_element(By.ID, "keys").text  # destroyed keys are not listed
