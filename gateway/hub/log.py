"""The hub's transparency log: an RFC 9162 (Certificate Transparency v2) Merkle tree, as pure functions.

Why a Merkle log and not just a table: a certifier holding one signed tree head can check, offline and
without trusting the hub's database, that a report is in the log (inclusion proof, log n hashes) and that a
later tree head extends the earlier one without rewriting anything (consistency proof). A hub that
quietly dropped or swapped a report would have to sign two inconsistent heads, which anyone can show.

Hashes (RFC 9162 §2.1.1), SHA-256 throughout:

    MTH({})      = SHA-256()
    leaf hash    = SHA-256(0x00 || leaf_input)
    node hash    = SHA-256(0x01 || left || right),  split at k = largest power of two < n

Proof generation follows §2.1.3.1 (PATH) and §2.1.4.1 (PROOF/SUBPROOF); the verifiers are the
algorithms of §2.1.3.2 and §2.1.4.2 step by step. Leaf inputs are RFC 8785 canonical JSON objects that
a verifier can rebuild from what it holds (a site report's leaf needs only the report's bytes).

Imports only the standard library, `cryptography` and `rfc8785` (through `signing`), so `gia verify`
can check log proofs without the hub.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.certification.signing import canonical, verify_signature

TREE_HEAD_SCHEMA: Final = "gia-tree-head/1"
LEAF_SCHEMA: Final = "gia-log-leaf/1"
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


class ProofError(Exception):
    """A proof was asked for sizes or indexes the tree does not have."""


# -- hashes ------------------------------------------------------------------------------------------
def leaf_hash(leaf_input: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf_input).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_hashes(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf *hashes* (already prefixed with 0x00 and hashed)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_from_hashes(leaves[:k]), root_from_hashes(leaves[k:]))


# -- proofs ------------------------------------------------------------------------------------------
def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) over leaf hashes: the audit path from leaf `index` to the root of all `leaves`."""
    if not 0 <= index < len(leaves):
        raise ProofError(f"leaf index {index} is not in a tree of size {len(leaves)}")
    return _path(index, leaves)


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n <= 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), root_from_hashes(d[k:])]
    return [*_path(m - k, d[k:]), root_from_hashes(d[:k])]


def consistency_proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(first, D[n]): proves the tree of the first `first` leaves is a prefix of all `leaves`."""
    n = len(leaves)
    if not 0 <= first <= n:
        raise ProofError(f"tree size {first} is not within a tree of size {n}")
    if first in (0, n):
        return []
    return _subproof(first, leaves, True)


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [root_from_hashes(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], b), root_from_hashes(d[k:])]
    return [*_subproof(m - k, d[k:], False), root_from_hashes(d[:k])]


# -- verifiers (RFC 9162 §2.1.3.2 and §2.1.4.2) -----------------------------------------------------
def verify_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes) -> bool:
    """True when `path` proves the leaf hash `leaf` sits at `index` in the tree of `tree_size` with `root`."""
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> bool:
    """True when `proof` shows the tree (`first`, `first_root`) is a prefix of (`second`, `second_root`)."""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT  # the empty tree is a prefix of every tree
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the first tree is a node of the second
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


# -- leaves ------------------------------------------------------------------------------------------
def site_report_leaf(site: str, month: str, report_sha256: str) -> bytes:
    """The leaf input of an accepted site report: rebuilt by a verifier from the report alone."""
    return canonical(
        {"schema": LEAF_SCHEMA, "kind": "site_report", "site": site, "month": month, "report_sha256": report_sha256}
    )


def key_transition_leaf(site: str, statement_sha256: str) -> bytes:
    return canonical(
        {"schema": LEAF_SCHEMA, "kind": "key_transition", "site": site, "statement_sha256": statement_sha256}
    )


def area_report_leaf(area: str, month: str, report_sha256: str) -> bytes:
    return canonical(
        {"schema": LEAF_SCHEMA, "kind": "area_report", "area": area, "month": month, "report_sha256": report_sha256}
    )


# -- tree heads --------------------------------------------------------------------------------------
def tree_head_body(tree_size: int, root: bytes, timestamp: str) -> dict[str, Any]:
    """What the hub signs (with `KeyStore.sign_report`, the same signature object as site reports)."""
    return {"schema": TREE_HEAD_SCHEMA, "tree_size": tree_size, "root": root.hex(), "timestamp": timestamp}


def verify_tree_head(head: dict[str, Any], hub_key: Ed25519PublicKey) -> str | None:
    """None when `head` is a tree head signed by `hub_key`, else what is wrong."""
    if head.get("schema") != TREE_HEAD_SCHEMA:
        return f"schema {head.get('schema')!r} is not {TREE_HEAD_SCHEMA!r}"
    if not isinstance(head.get("tree_size"), int) or not isinstance(head.get("root"), str):
        return "tree head lacks an integer tree_size or a hex root"
    return verify_signature(head, hub_key)


def check_report_inclusion(
    report: bytes, proof: dict[str, Any], head: dict[str, Any], hub_key: Ed25519PublicKey
) -> list[str]:
    """Offline: is this site report (its exact bytes) in the log under this hub-signed tree head?

    `proof` is what `gia hub log proof` / `GET /api/v1/log/proof` return (`leaf_index`, `tree_size`,
    `audit_path` hex list); `head` a signed tree head of the same size. Returns the problems (empty: OK).
    """
    import json

    problems: list[str] = []
    bad = verify_tree_head(head, hub_key)
    if bad is not None:
        return [f"tree head: {bad}"]
    try:
        doc = json.loads(report)
        leaf = site_report_leaf(str(doc["site"]["id"]), str(doc["period"]["month"]), hashlib.sha256(report).hexdigest())
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        index, size = int(proof["leaf_index"]), int(proof["tree_size"])
        root = bytes.fromhex(head["root"])
    except (ValueError, KeyError, TypeError) as exc:
        return [f"unusable proof or report ({type(exc).__name__}: {exc})"]
    if size != head["tree_size"]:
        problems.append(f"proof is for tree size {size}, the tree head for {head['tree_size']}")
    elif not verify_inclusion(leaf_hash(leaf), index, size, path, root):
        problems.append(f"the report is not at leaf {index} of the tree with root {head['root']}")
    return problems
