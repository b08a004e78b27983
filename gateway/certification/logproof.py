"""Checking an area hub's transparency log offline: RFC 9162 proofs and hub-signed tree heads. Pure.

The hub (`gateway/hub/log.py`) keeps an append-only Merkle log of every accepted site report, key
transition and area report, and signs its tree heads. A certifier holding the hub's pinned public key,
a signed tree head and an inclusion proof checks, without the hub, that a report (its exact bytes) is
in the log; with two heads and a consistency proof, that the later log extends the earlier one without
rewriting it. This module is the verifying half, kept beside `verify` so `gia verify --log-head` needs
nothing of the hub (standard library, `cryptography`, `rfc8785`).

Hashes (RFC 9162 §2.1.1), SHA-256 throughout:

    MTH({})      = SHA-256()
    leaf hash    = SHA-256(0x00 || leaf_input)
    node hash    = SHA-256(0x01 || left || right),  split at k = largest power of two < n

The verifiers are the algorithms of §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step. Leaf
inputs are RFC 8785 canonical JSON objects a verifier rebuilds from what it holds: a site report's leaf
needs only the report's bytes, an area report's leaf only the area report's bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.certification.signing import canonical, verify_signature

TREE_HEAD_SCHEMA: Final = "gia-tree-head/1"
LEAF_SCHEMA: Final = "gia-log-leaf/1"
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


# -- hashes ------------------------------------------------------------------------------------------
def leaf_hash(leaf_input: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf_input).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


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
    """`month` is YYYY-MM for a monthly area report, YYYY for a yearly roll-up."""
    return canonical(
        {"schema": LEAF_SCHEMA, "kind": "area_report", "area": area, "month": month, "report_sha256": report_sha256}
    )


def leaf_of_report(report: bytes) -> bytes:
    """The leaf a hub appends for this exact report (site report or area report); raises ValueError."""
    try:
        doc = json.loads(report)
        sha = hashlib.sha256(report).hexdigest()
        if doc.get("schema") == "gia-area-report/1":
            period = doc["period"]
            return area_report_leaf(str(doc["area"]), str(period.get("month") or period["year"]), sha)
        return site_report_leaf(str(doc["site"]["id"]), str(doc["period"]["month"]), sha)
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a site or area report ({type(exc).__name__}: {exc})") from None


# -- tree heads --------------------------------------------------------------------------------------
def verify_tree_head(head: Mapping[str, Any], hub_key: Ed25519PublicKey) -> str | None:
    """None when `head` is a tree head signed by `hub_key`, else what is wrong."""
    if head.get("schema") != TREE_HEAD_SCHEMA:
        return f"schema {head.get('schema')!r} is not {TREE_HEAD_SCHEMA!r}"
    if not isinstance(head.get("tree_size"), int) or not isinstance(head.get("root"), str):
        return "tree head lacks an integer tree_size or a hex root"
    return verify_signature(dict(head), hub_key)


def check_report_inclusion(
    report: bytes, proof: Mapping[str, Any], head: Mapping[str, Any], hub_key: Ed25519PublicKey
) -> list[str]:
    """Offline: is this report (its exact bytes) in the log under this hub-signed tree head?

    `proof` is what `gia hub log proof` / `GET /api/v1/log/proof` return (`leaf_index`, `tree_size`,
    `audit_path` hex list); `head` a signed tree head of the same size. Returns the problems (empty: OK).
    """
    bad = verify_tree_head(head, hub_key)
    if bad is not None:
        return [f"tree head: {bad}"]
    try:
        leaf = leaf_of_report(report)
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        index, size = int(proof["leaf_index"]), int(proof["tree_size"])
        root = bytes.fromhex(str(head["root"]))
    except (ValueError, KeyError, TypeError) as exc:
        return [f"unusable proof or report ({type(exc).__name__}: {exc})"]
    if size != head["tree_size"]:
        return [f"proof is for tree size {size}, the tree head for {head['tree_size']}"]
    if not verify_inclusion(leaf_hash(leaf), index, size, path, root):
        return [f"the report is not at leaf {index} of the tree with root {head['root']} (size {size})"]
    return []


def load_log_files(head_data: bytes, proof_data: bytes | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tree head, inclusion proof) from `--log-head FILE` (a signed tree head, or a proof file that embeds
    its `tree_head`) and `--log-proof FILE`; raises ValueError with what is missing."""
    head = json.loads(head_data)
    if not isinstance(head, dict):
        raise ValueError("--log-head: not a JSON object (a signed tree head or a `gia hub log proof` file)")
    proof = json.loads(proof_data) if proof_data is not None else None
    if proof is None and isinstance(head.get("tree_head"), dict):
        proof, head = head, head["tree_head"]
    elif isinstance(head.get("tree_head"), dict):
        head = head["tree_head"]
    if not isinstance(proof, dict):
        raise ValueError(
            "an inclusion proof is needed: pass --log-proof FILE (gia hub log proof / GET /api/v1/log/proof),"
            " or give that file as --log-head"
        )
    return head, proof


__all__ = [
    "EMPTY_ROOT",
    "LEAF_SCHEMA",
    "TREE_HEAD_SCHEMA",
    "area_report_leaf",
    "check_report_inclusion",
    "key_transition_leaf",
    "leaf_hash",
    "leaf_of_report",
    "load_log_files",
    "node_hash",
    "site_report_leaf",
    "verify_consistency",
    "verify_inclusion",
    "verify_tree_head",
]
