// The client module's key proof (docs/PROTOCOL.md §3.6) against the golden
// vectors, in Node's WebCrypto (no browser needed): the same key id,
// listener proof and dialer proof message from the same inputs, and hex keys
// read exactly as the Rust runtime reads them.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { keyProof, parseKey, PlexusError } from "../plexus.js";

const here = dirname(fileURLToPath(import.meta.url));
const vectors = JSON.parse(await readFile(join(here, "..", "..", "..", "docs", "vectors", "v2.json"), "utf8"));
const hex = (text) => Uint8Array.from(text.split(/\s+/).filter(Boolean).map((b) => parseInt(b, 16)));
const nodeId = (text) => Uint8Array.from(text.match(/../g).map((b) => parseInt(b, 16)));

test("the vectors have key proofs", () => {
  assert.ok(vectors.key_proofs.length >= 1);
});

for (const v of vectors.key_proofs) {
  test(`key proof vector ${v.name}`, async () => {
    const hmac = await keyProof.hmacKey(hex(v.key));
    const [dialer, listener] = [nodeId(v.dialer_node_id), nodeId(v.listener_node_id)];
    const [nd, nl] = [hex(v.dialer_nonce), hex(v.listener_nonce)];
    assert.deepEqual(await keyProof.keyId(hmac), hex(v.key_id));
    const proof = await keyProof.listenerProof(hmac, dialer, listener, nd, nl);
    assert.deepEqual(proof, hex(v.listener_proof));
    assert.equal(await keyProof.verifyListener(hmac, proof, dialer, listener, nd, nl), true);
    assert.equal(await keyProof.verifyListener(hmac, proof, listener, dialer, nd, nl), false, "bound to who dialed whom");
    assert.deepEqual(await keyProof.dialerProofMessage(hmac, dialer, listener, nd, nl), hex(v.dialer_proof_message));
    // The welcome carries key id, listener nonce and proof as extension type 1.
    const [ext] = v.welcome.decoded.extensions;
    assert.equal(ext.type, 1);
    assert.deepEqual(hex(ext.value), Uint8Array.from([...hex(v.key_id), ...nl, ...hex(v.listener_proof)]));
  });
}

test("hex keys are read as SessionKey::from_hex reads them", () => {
  const key = "00112233445566778899AABBCCDDEEFF";
  assert.deepEqual(parseKey(`  ${key}\n`), hex(key.match(/../g).join(" ")));
  const refused = (text, message) => assert.throws(() => parseKey(text), (e) => e instanceof PlexusError && e.kind === "KeyFormat" && e.message.includes(message));
  refused("abc", "even number of digits, not 3");
  refused("00112233445566778899aabbccddeexz", "character 30 of the session key is not a hex digit");
  refused("c0ffee", "3 bytes is too short");
  assert.throws(() => parseKey(new Uint8Array()), /empty/);
  assert.equal(parseKey(Uint8Array.of(7)).length, 1);
});
