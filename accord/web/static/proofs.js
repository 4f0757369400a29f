/*
 * Checks, in the citizen's own browser, that each entry on /me is in the ledger's signed tree.
 *
 * No dependencies and no build: plain JavaScript and WebCrypto. For each element
 * [data-accord-proof="<seq>"] it takes that entry's bundle from the JSON at the URL in
 * [data-accord-proofs] (accord/web/proofs.py makes them) and checks, in this order:
 *
 *   1. the leaf: SHA-256(0x00 || leaf) equals the leaf hash; the leaf's first field (its
 *      seq, an Avro long) is leaf_index + 1; and its disclosure id, recipient and outcome
 *      are those of the entry the page shows (the element's data-disclosure-id and
 *      data-outcome, its section's data-recipient);
 *   2. the checkpoint's signature: a C2SP signed note (ledger/note.py) whose text, up to
 *      and including the newline before the last blank line, is signed with Ed25519 by
 *      the ledger's key (vkey = <name>+<hex key id>+<base64(0x01 || key)>, key id =
 *      SHA-256(name || 0x0A || 0x01 || key)[:4]); checked with crypto.subtle;
 *   3. the checkpoint's text: origin, tree size, base64 root, one per line; its tree size
 *      must be the bundle's;
 *   4. the inclusion proof: RFC 9162 section 2.1.3.2 from the leaf hash, with
 *      node = SHA-256(0x01 || left || right), must end at the signed root.
 *
 * It writes "Verified in your browser" or what failed into the entry's status element
 * (an aria-live region, so screen readers announce it). accord/web/proofs.py's
 * check_bundle is the same check in Python, with the same words.
 */
(function () {
  "use strict";

  var VERIFIED = "Verified in your browser";
  var FAILURES = {
    malformed: "the proof is not in the expected form",
    leaf: "the leaf does not match its hash",
    index: "the leaf is not the entry it claims to be",
    entry: "the signed entry is not the one shown here",
    signature: "the checkpoint's signature does not verify with the ledger's key",
    checkpoint: "the signed checkpoint cannot be read",
    size: "the checkpoint is for a different tree size than the proof",
    root: "the proof does not lead to the signed root",
    unsupported: "this browser cannot check Ed25519 signatures",
    unavailable: "the proof could not be fetched"
  };

  function Failure(key) {
    this.key = key;
  }

  function fail(key) {
    throw new Failure(key);
  }

  var B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

  function b64(text, failure) {
    if (typeof text !== "string" || !B64.test(text)) fail(failure || "malformed");
    var bin = atob(text);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function concat(parts) {
    var n = 0;
    parts.forEach(function (p) { n += p.length; });
    var out = new Uint8Array(n);
    var at = 0;
    parts.forEach(function (p) { out.set(p, at); at += p.length; });
    return out;
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function sha256(parts) {
    return crypto.subtle.digest("SHA-256", concat(parts)).then(function (d) { return new Uint8Array(d); });
  }

  var LEAF = new Uint8Array([0]);
  var NODE = new Uint8Array([1]);
  var utf8 = new TextEncoder();

  function hex(bytes) {
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function isCount(n) {
    return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
  }

  // The leaf is the Avro binary of schemas/disclosure.avsc; its first fields, in order, are
  // seq (long), disclosure_id, event_id, event_type, provider, recipient, agreement_id (strings),
  // agreement_version (int), purpose, legal_basis (strings) and outcome (an enum's index).
  var OUTCOMES = ["DISCLOSED", "WITHHELD", "RETRACTED", "RECEIVED", "NOT_COVERED"];
  var strictUtf8 = new TextDecoder("utf-8", { fatal: true });

  function readLong(leaf, at) {
    var value = 0n;
    var shift = 0n;
    for (var i = at; i < Math.min(leaf.length, at + 10); i++) {
      value |= BigInt(leaf[i] & 0x7f) << shift;
      if (!(leaf[i] & 0x80)) return { value: (value >> 1n) ^ -(value & 1n), next: i + 1 };
      shift += 7n;
    }
    fail("index");
  }

  function readString(leaf, at) {
    var n = readLong(leaf, at);
    var end = n.next + Number(n.value);
    if (n.value < 0n || end > leaf.length) fail("index");
    return { value: strictUtf8.decode(leaf.subarray(n.next, end)), next: end };
  }

  function leafHead(leaf) {
    var head = {};
    var r = readLong(leaf, 0);
    head.seq = r.value;
    ["disclosure_id", "event_id", "event_type", "provider", "recipient", "agreement_id"].forEach(function (name) {
      r = readString(leaf, r.next);
      head[name] = r.value;
    });
    r = readLong(leaf, r.next);
    r = readString(leaf, r.next);
    r = readString(leaf, r.next);
    r = readLong(leaf, r.next);
    head.outcome = OUTCOMES[Number(r.value)];
    return head;
  }

  // RFC 9162 2.1.3.2. Plain arithmetic rather than bit operators: those are 32-bit in JavaScript.
  async function leadsTo(leafHash, index, size, path, root) {
    if (!(index < size)) return false;
    var fn = index;
    var sn = size - 1;
    var r = leafHash;
    for (var i = 0; i < path.length; i++) {
      var p = path[i];
      if (p.length !== 32 || sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        r = await sha256([NODE, p, r]);
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      } else {
        r = await sha256([NODE, r, p]);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 && equal(r, root);
  }

  // <name>+<8 hex digits>+<base64(0x01 || 32-byte key)>; the base64 may hold '+', a name may not.
  async function parseVkey(vkey) {
    if (typeof vkey !== "string") fail("malformed");
    vkey = vkey.trim();
    var a = vkey.indexOf("+");
    var b = a < 0 ? -1 : vkey.indexOf("+", a + 1);
    if (a <= 0 || b < 0) fail("malformed");
    var name = vkey.slice(0, a);
    var id = vkey.slice(a + 1, b).toLowerCase();
    var key = b64(vkey.slice(b + 1));
    if (/\s/.test(name) || key.length !== 33 || key[0] !== 1) fail("malformed");
    var publicKey = key.slice(1);
    var keyId = (await sha256([utf8.encode(name + "\n"), NODE, publicKey])).slice(0, 4);
    if (hex(keyId) !== id) fail("malformed");
    return { name: name, keyId: keyId, publicKey: publicKey };
  }

  // A C2SP signed note: text, a blank line, then lines "\u2014 <name> <base64(key id || signature)>".
  function parseNote(note) {
    if (typeof note !== "string" || /[\u0000-\u0009\u000b-\u001f]/.test(note)) fail("checkpoint");
    var cut = note.lastIndexOf("\n\n");
    if (cut < 0) fail("checkpoint");
    var text = note.slice(0, cut + 1);
    var rest = note.slice(cut + 2);
    if (!rest.endsWith("\n")) fail("checkpoint");
    var signatures = rest.slice(0, -1).split("\n").map(function (line) {
      if (!line.startsWith("\u2014 ")) fail("checkpoint");
      var parts = line.slice(2).split(" ");
      if (parts.length !== 2 || !parts[0]) fail("checkpoint");
      var raw = b64(parts[1], "checkpoint");
      if (raw.length < 5) fail("checkpoint");
      return { name: parts[0], keyId: raw.slice(0, 4), signature: raw.slice(4) };
    });
    return { text: text, signatures: signatures };
  }

  // origin, tree size (decimal, no leading zeros), base64 root (32 bytes): three lines.
  function parseCheckpoint(text) {
    var lines = text.split("\n");
    if (lines.length !== 4 || lines[3] !== "" || !lines[0]) fail("checkpoint");
    if (!/^(0|[1-9][0-9]*)$/.test(lines[1])) fail("checkpoint");
    var root = b64(lines[2], "checkpoint");
    if (root.length !== 32) fail("checkpoint");
    return { origin: lines[0], treeSize: Number(lines[1]), root: root };
  }

  async function signedBy(note, verifier) {
    var mine = note.signatures.filter(function (s) {
      return s.name === verifier.name && equal(s.keyId, verifier.keyId);
    });
    if (!mine.length) return false;
    var key;
    try {
      key = await crypto.subtle.importKey("raw", verifier.publicKey, { name: "Ed25519" }, false, ["verify"]);
    } catch (e) {
      fail("unsupported");
    }
    var data = utf8.encode(note.text);
    for (var i = 0; i < mine.length; i++) {
      if (!(await crypto.subtle.verify({ name: "Ed25519" }, key, mine[i].signature, data))) return false;
    }
    return true;
  }

  // null when the bundle verifies, else the key of FAILURES naming the first check that failed.
  // ``shown``: what the page says the entry is ({disclosure_id, recipient, outcome}), if anything.
  async function check(bundle, shown) {
    try {
      if (!bundle || typeof bundle !== "object") fail("malformed");
      var leaf = b64(bundle.leaf);
      var statedHash = b64(bundle.leaf_hash);
      var index = bundle.leaf_index;
      var size = bundle.tree_size;
      if (!isCount(index) || !isCount(size) || !Array.isArray(bundle.proof)) fail("malformed");
      var path = bundle.proof.map(function (p) { return b64(p); });
      var verifier = await parseVkey(bundle.vkey);

      var leafHash = await sha256([LEAF, leaf]);
      if (!equal(leafHash, statedHash)) fail("leaf");
      var head;
      try {
        head = leafHead(leaf);
      } catch (e) {
        fail("index");
      }
      if (head.seq !== BigInt(index) + 1n) fail("index");
      if (shown && ["disclosure_id", "recipient", "outcome"].some(function (k) { return head[k] !== shown[k]; })) {
        fail("entry");
      }
      var note = parseNote(bundle.checkpoint);
      if (!(await signedBy(note, verifier))) fail("signature");
      var checkpoint = parseCheckpoint(note.text);
      if (checkpoint.treeSize !== size) fail("size");
      if (!(await leadsTo(leafHash, index, size, path, checkpoint.root))) fail("root");
      return null;
    } catch (e) {
      if (e instanceof Failure) return e.key;
      return "malformed";
    }
  }

  function show(element, failure) {
    var status = element.querySelector("[data-accord-proof-status]") || element;
    element.setAttribute("data-accord-proof-result", failure ? "failed" : "verified");
    status.textContent = failure ? "Not verified: " + FAILURES[failure] + "." : VERIFIED;
    status.classList.remove("govuk-tag--grey", "govuk-tag--green", "govuk-tag--red");
    status.classList.add(failure ? "govuk-tag--red" : "govuk-tag--green");
  }

  function summarise(root, results) {
    var summary = root.querySelector("[data-accord-proof-summary]");
    if (!summary || !results.length) return;
    var failed = results.filter(function (r) { return r !== null; }).length;
    var n = results.length;
    summary.textContent = failed
      ? failed + " of " + n + (n === 1 ? " entry" : " entries") + " did not verify in your browser; " +
        (failed === 1 ? "it is" : "they are") + " marked “Not verified” below."
      : (n === 1 ? "The entry below" : "All " + n + " entries below") + " verified in your browser: " +
        (n === 1 ? "it is" : "each is") + " in the signed record, unchanged.";
    summary.setAttribute("data-accord-proof-result", failed ? "failed" : "verified");
  }

  function shownAs(element) {
    var recipient = element.closest("[data-recipient]");
    return {
      disclosure_id: element.getAttribute("data-disclosure-id"),
      recipient: recipient ? recipient.getAttribute("data-recipient") : null,
      outcome: element.getAttribute("data-outcome")
    };
  }

  async function run(root) {
    var source = root.querySelector("[data-accord-proofs]");
    var entries = Array.prototype.slice.call(root.querySelectorAll("[data-accord-proof]"));
    if (!source || !entries.length) return;
    var bundles = null;
    try {
      var response = await fetch(source.getAttribute("data-accord-proofs"), {
        credentials: "same-origin",
        headers: { Accept: "application/json" }
      });
      if (response.ok) bundles = await response.json();
    } catch (e) {
      bundles = null;
    }
    var results = [];
    for (var i = 0; i < entries.length; i++) {
      var seq = entries[i].getAttribute("data-accord-proof");
      var failure = bundles && bundles[seq] ? await check(bundles[seq], shownAs(entries[i])) : "unavailable";
      show(entries[i], failure);
      results.push(failure);
    }
    summarise(root, results);
  }

  var api = { check: check, FAILURES: FAILURES, OUTCOMES: OUTCOMES, VERIFIED: VERIFIED, run: run };
  if (typeof window !== "undefined") {
    window.AccordProofs = api;
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", function () { run(document); });
    } else {
      run(document);
    }
  }
})();
