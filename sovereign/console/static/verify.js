// Checks one ledger entry's inclusion proof in the browser, trusting nothing the server says about the
// result: leaf hash -> RFC 9162 audit path -> root of the signed checkpoint -> the checkpoint's signed
// bytes encode that size and root -> Ed25519 signature with the audit public key shown on the page.
"use strict";

const enc = new TextEncoder();

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex(text) {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new Error("not hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// RFC 9162 section 2.1.3.2
async function rootFromPath(index, size, leaf, path) {
  if (index >= size) throw new Error("leaf index is not below the tree size");
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) throw new Error("audit path is longer than the tree is deep");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await sha256(concat([1], p, r));
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      }
    } else {
      r = await sha256(concat([1], r, p));
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("audit path is shorter than the tree is deep");
  return r;
}

function checkBody(body, proof) {
  const lines = new TextDecoder().decode(body).split("\n");
  if (lines.length !== 7 || lines[6] !== "" || lines[0] !== "sovereign/v1 checkpoint") {
    throw new Error("the signed checkpoint is not in the checkpoint format");
  }
  if (lines[1] !== proof.key_name) throw new Error("the checkpoint names another signing key");
  if (lines[2] !== String(proof.key_version)) throw new Error("the checkpoint names another key version");
  if (lines[3] !== String(proof.tree_size)) throw new Error("the signed size is not the proof's tree size");
  if (lines[4] !== proof.root) throw new Error("the signed root is not the proof's root");
}

async function verify(proof, keyHex, canonical, step) {
  const leaf = await sha256(concat([0], enc.encode(canonical)));
  step(`leaf hash ${hex(leaf)}`);
  const root = await rootFromPath(proof.sequence, proof.tree_size, leaf, proof.path.map(unhex));
  step(`root from ${proof.path.length} path hashes: ${hex(root)}`);
  if (hex(root) !== proof.root) throw new Error("the audit path does not lead to the checkpoint's root");
  step(`equals the root of checkpoint size ${proof.tree_size} (${proof.checkpoint_time})`);
  const body = unhex(proof.signed_body);
  checkBody(body, proof);
  step("the signed checkpoint encodes that size and root");
  if (proof.algorithm !== "ed25519") throw new Error(`unsupported signature algorithm ${proof.algorithm}`);
  const key = await crypto.subtle.importKey("raw", unhex(keyHex), { name: "Ed25519" }, false, ["verify"]);
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, unhex(proof.signature), body);
  if (!ok) throw new Error("the checkpoint signature does not verify with the audit public key");
  step(`signature by ${proof.key_name} v${proof.key_version} verifies`);
}

async function run() {
  const box = document.getElementById("proof");
  const verdict = document.getElementById("verdict");
  const steps = document.getElementById("steps");
  steps.replaceChildren();
  const step = (text) => { const li = document.createElement("li"); li.textContent = text; steps.append(li); };
  verdict.className = "pending";
  verdict.textContent = "checking…";
  try {
    const response = await fetch(`/api/proof/${box.dataset.sequence}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`the server refused the proof (HTTP ${response.status})`);
    const proof = await response.json();
    // The bytes shown on the page are the ones checked: what the reader sees is what is proved.
    const canonical = document.getElementById("canonical").textContent;
    if (canonical !== proof.canonical) throw new Error("the proof is for other entry bytes than the page shows");
    await verify(proof, box.dataset.key, canonical, step);
    verdict.className = "ok";
    verdict.textContent = "VERIFIED: this entry is in the signed ledger";
  } catch (err) {
    verdict.className = "bad";
    verdict.textContent = `NOT VERIFIED: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("verify").addEventListener("click", run);
  run();
});
