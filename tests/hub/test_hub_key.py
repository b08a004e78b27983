"""Replicas on one database sign with one hub key, or the odd one out does not start.

Found while writing the replica fault tests: a second replica whose data_dir lacked the key file made a
key of its own and went on signing tree heads and receipts with it; a certifier who pinned the first
key then finds half the log's heads unverifiable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.certification.signing import key_id
from gateway.hub.config import DatabaseConfig
from gateway.hub.store import HubKeyMismatch, HubStore
from tests.hub.conftest import hub_config


def test_a_replica_with_another_key_or_none_does_not_start(tmp_path: Path, hub_db: DatabaseConfig) -> None:
    first = HubStore.open(hub_config(tmp_path / "a", hub_db))
    try:
        first_key = key_id(first.keys.public_key())
    finally:
        first.close()
    # a replica provisioned with no key file: refused, and no key file appears
    with pytest.raises(HubKeyMismatch, match=r"hub-ed25519\.pem is missing.*copy keys/hub-ed25519\.pem"):
        HubStore.open(hub_config(tmp_path / "b", hub_db))
    assert not (tmp_path / "b" / "hub" / "keys" / "hub-ed25519.pem").exists()
    # a replica with a key of its own: refused, naming both keys
    other = HubStore.open(hub_config(tmp_path / "c", DatabaseConfig(url=f"sqlite:///{tmp_path / 'c.db'}")))
    other_key = key_id(other.keys.public_key())
    other.close()
    (tmp_path / "d" / "hub").mkdir(parents=True)
    shutil.copytree(tmp_path / "c" / "hub" / "keys", tmp_path / "d" / "hub" / "keys")
    with pytest.raises(HubKeyMismatch, match=f"holds hub key {other_key}.*signed by hub key {first_key}"):
        HubStore.open(hub_config(tmp_path / "d", hub_db))
    # the key copied from the first replica: it starts, and signs with the same key
    (tmp_path / "e" / "hub").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "hub" / "keys", tmp_path / "e" / "hub" / "keys")
    replica = HubStore.open(hub_config(tmp_path / "e", hub_db))
    try:
        assert key_id(replica.keys.public_key()) == first_key
    finally:
        replica.close()
