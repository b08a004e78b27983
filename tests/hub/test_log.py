"""The transparency log's Merkle math (RFC 9162 §2.1): proofs verify for every size, tampering never does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.certification.signing import KeyStore
from gateway.hub import log


def leaves(n: int) -> list[bytes]:
    return [log.leaf_hash(f"leaf {i}".encode()) for i in range(n)]


def test_known_roots_by_hand() -> None:
    """Roots computed by hand from the RFC's definition: no splitting code involved."""
    a, b, c = (log.leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert log.root_from_hashes([]) == hashlib.sha256(b"").digest()
    assert log.root_from_hashes([a]) == hashlib.sha256(b"\x00a").digest()
    ab = hashlib.sha256(b"\x01" + a + b).digest()
    assert log.root_from_hashes([a, b]) == ab
    # three leaves split at k = 2: (a b) c
    assert log.root_from_hashes([a, b, c]) == hashlib.sha256(b"\x01" + ab + c).digest()


def _rfc_root(d: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 §2.1.1 writes it: split at the largest power of two below n."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return log.node_hash(_rfc_root(d[:k]), _rfc_root(d[k:]))


def test_the_bottom_up_root_is_the_rfcs_recursive_one_for_every_size() -> None:
    d = leaves(600)
    for n in range(len(d) + 1):
        assert log.root_from_hashes(d[:n]) == _rfc_root(d[:n]), n


def test_rfc_example_proofs_shape() -> None:
    """RFC 9162 §2.1.5's 7-leaf tree: the audit path of d0 is [b, h, l]; PROOF(3, D[7]) is [c, d, g, l]."""
    d = leaves(7)
    a, b, c, dd, e, f, g = d
    h, i, j = log.node_hash(c, dd), log.node_hash(e, f), log.node_hash(a, b)
    k = log.node_hash(j, h)
    l_ = log.node_hash(i, g)
    assert log.inclusion_proof(0, d) == [b, h, l_]
    assert log.consistency_proof(3, d) == [c, dd, j, l_]
    assert log.consistency_proof(4, d) == [l_]
    assert log.consistency_proof(6, d) == [i, g, k]
    assert log.root_from_hashes(d) == log.node_hash(k, l_)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_every_inclusion_proof_verifies_and_tampering_fails(n: int, data: st.DataObject) -> None:
    d = leaves(n)
    root = log.root_from_hashes(d)
    i = data.draw(st.integers(0, n - 1))
    path = log.inclusion_proof(i, d)
    assert log.verify_inclusion(d[i], i, n, path, root)
    # wrong leaf, index, root, or any path element changed / dropped / added: refused. (A wrong tree size
    # can pass where the path has the same shape: the signed tree head binds size and root together.)
    assert not log.verify_inclusion(log.leaf_hash(b"other"), i, n, path, root)
    if n > 1:
        assert not log.verify_inclusion(d[i], (i + 1) % n, n, path, root)
    assert not log.verify_inclusion(d[i], i, n, path, log.leaf_hash(b"root"))
    if path:
        j = data.draw(st.integers(0, len(path) - 1))
        bad = list(path)
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        assert not log.verify_inclusion(d[i], i, n, bad, root)
        assert not log.verify_inclusion(d[i], i, n, path[:-1], root)
    assert not log.verify_inclusion(d[i], i, n, [*path, root], root)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.data())
def test_every_consistency_proof_verifies_and_tampering_fails(n: int, data: st.DataObject) -> None:
    d = leaves(n)
    m = data.draw(st.integers(0, n))
    r1, r2 = log.root_from_hashes(d[:m]), log.root_from_hashes(d)
    proof = log.consistency_proof(m, d)
    assert log.verify_consistency(m, n, r1, r2, proof)
    if 0 < m < n:
        # a rewritten history (any earlier leaf changed) is not consistent with the new root
        k = data.draw(st.integers(0, m - 1))
        forged = list(d)
        forged[k] = log.leaf_hash(b"rewritten")
        assert not log.verify_consistency(m, n, log.root_from_hashes(forged[:m]), r2, proof)
        assert not log.verify_consistency(m, n, r1, log.root_from_hashes(forged), proof)
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        assert not log.verify_consistency(m, n, r1, r2, bad)
        assert not log.verify_consistency(m, n, r1, r2, proof[:-1])
        assert not log.verify_consistency(m, n, r1, r2, [])
    if m < n:
        assert not log.verify_consistency(n, m, r2, r1, proof)


def test_proofs_for_impossible_sizes_are_refused() -> None:
    d = leaves(5)
    with pytest.raises(log.ProofError):
        log.inclusion_proof(5, d)
    with pytest.raises(log.ProofError):
        log.consistency_proof(6, d)


def test_report_inclusion_offline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What a certifier runs: report bytes + proof + hub-signed head + hub key, nothing else."""
    report = b'{"site": {"id": "mill"}, "period": {"month": "2025-03"}, "x": 1}'
    sha = hashlib.sha256(report).hexdigest()
    inputs = [log.site_report_leaf("bakery", "2025-03", "00" * 32), log.site_report_leaf("mill", "2025-03", sha)]
    inputs += [log.key_transition_leaf("bakery", "11" * 32)]
    d = [log.leaf_hash(x) for x in inputs]
    keys = KeyStore(tmp_path / "keys")
    head = keys.sign_report(log.tree_head_body(3, log.root_from_hashes(d), "2025-04-02T00:00:00Z"))
    proof = {"leaf_index": 1, "tree_size": 3, "audit_path": [h.hex() for h in log.inclusion_proof(1, d)]}
    pub = keys.public_key()
    assert log.check_report_inclusion(report, proof, head, pub) == []
    assert log.check_report_inclusion(report + b" ", proof, head, pub) != []  # other bytes, other leaf
    assert log.check_report_inclusion(report, {**proof, "leaf_index": 0}, head, pub) != []
    forged = {**head, "root": "00" * 32}
    assert log.check_report_inclusion(report, proof, forged, pub)[0].startswith("tree head:")
    other = KeyStore(tmp_path / "other").public_key()
    assert log.check_report_inclusion(report, proof, head, other)[0].startswith("tree head:")
