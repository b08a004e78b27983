"""The site's signing key: when one may be created, and how it is replaced (`gia keys rotate`).

Why this exists: with the keys folder deleted, the gateway used to make a new key on first use and sign
with it, and a verifier that trusted the key shipped beside the report said "valid". Now:

* a key is created silently only for a site that has nothing yet (no readings, no recorded key, no
  closed report): a fresh install's first start, or `gia keys show` before it;
* with an existing ledger and no key file, the agent refuses to start and reports cannot be signed
  (`KeyMissing`) until an operator runs `gia keys rotate --reason TEXT`;
* every key that signs is announced in the ledger's events chain by a key-transition statement
  (`keys.transition_detail`), signed by the new key and, when the old private key still exists, by the
  old one: a certifier who pinned the old key follows the transition; one who did not must pin the new
  key out of band. The retired private key is deleted; its public key stays under `keys/retired/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.certification.keys import EVENT_KIND, transition_detail
from gateway.certification.signing import KeyMissing, KeyStore, key_id, public_pem, write_private_key
from gateway.ledger.store import Ledger
from gateway.runtime.clockguard import ClockImplausible, guarded_now

__all__ = ["KeyMissing", "Rotation", "ensure_site_key", "ledger_started", "rotate_site_key"]


def ledger_started(ledger_path: Path) -> bool:
    """True when the ledger holds anything a key has or will have to answer for: readings, a recorded
    key, a closed report."""
    if not Path(ledger_path).exists():
        return False
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        if db.execute("SELECT 1 FROM readings LIMIT 1").fetchone():
            return True
        kinds = (EVENT_KIND, "report_closed")
        return bool(db.execute("SELECT 1 FROM events WHERE kind IN (?, ?) LIMIT 1", kinds).fetchone())
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def _recorded_key_ids(ledger: Ledger) -> list[str]:
    out = []
    for e in ledger.events(kind=EVENT_KIND):
        try:
            out.append(str(json.loads(e.detail)["statement"]["new_key_id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


@dataclass(frozen=True, slots=True)
class Rotation:
    key_id: str
    old_key_id: str | None
    signed_by_old: bool
    event_id: int


def _record(ledger: Ledger, *, site: str, new: Ed25519PrivateKey, old: Ed25519PrivateKey | None, reason: str) -> int:
    now = guarded_now(ledger.clock_floor_ms())
    detail = transition_detail(
        site=site, new_key=new, old_key=old, old_key_id=None, reason=reason, at=now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return ledger.record_event(
        EVENT_KIND, json.dumps(detail, sort_keys=True), ts_ms=int(now.timestamp() * 1000), device=None
    )


def ensure_site_key(keys_dir: Path, ledger_path: Path, *, site: str) -> KeyStore:
    """The site's key store for the agent's start and `gia keys show|export`.

    Creates the key only for a site with nothing yet, and makes sure the key in use is announced in the
    events chain (a ledger from before key transitions were recorded gets one statement, signed by the
    key itself). Raises `KeyMissing` when the ledger has started and the key file is gone.
    """
    store = KeyStore(keys_dir, create=False)
    if not store.exists():
        if ledger_started(ledger_path):
            store.public_key()  # raises KeyMissing with what to do
        try:
            rotate_site_key(keys_dir, ledger_path, site=site, reason="initial site key")
        except ClockImplausible:
            # a first start with the clock unset (a Pi boots in 1970): the key is made now and announced at
            # a later start, once the clock can date the statement (the agent holds readings till then)
            if not store.exists():
                _first_key(Path(keys_dir), store)
        return store
    if Path(ledger_path).exists():
        ledger = Ledger(ledger_path)
        try:
            pub = store.public_key()
            if key_id(pub) not in _recorded_key_ids(ledger):
                key = store.private_key_for_rotation()
                assert key is not None
                why = "key in use when key transitions began to be recorded"
                with contextlib.suppress(ClockImplausible):
                    _record(ledger, site=site, new=key, old=None, reason=why)
        finally:
            ledger.close()
    return store


def _first_key(keys_dir: Path, store: KeyStore) -> None:
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    write_private_key(store.path, Ed25519PrivateKey.generate(), replace=False)


def rotate_site_key(keys_dir: Path, ledger_path: Path, *, site: str, reason: str) -> Rotation:
    """A new site key; the transition statement (signed by the old key when it exists) goes into the
    events chain before the new key file replaces the old one."""
    if not reason.strip():
        raise ValueError("a key rotation needs a reason (--reason TEXT): certifiers read it")
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    store = KeyStore(keys_dir, create=False)
    old = store.private_key_for_rotation()
    new = Ed25519PrivateKey.generate()
    if old is None:
        # nothing to replace: the key file first, so a crash before the statement leaves a key that
        # `ensure_site_key` announces at the next start (never a recorded key without its file)
        write_private_key(store.path, new, replace=True)
    ledger = Ledger(ledger_path)
    try:
        event_id = _record(ledger, site=site, new=new, old=old, reason=reason)
    finally:
        ledger.close()
    if old is not None:
        # the statement first: a crash before the new file leaves the old key, whose next rotation the
        # chain still follows (its statement is signed by the key the chain last trusted)
        retired = keys_dir / "retired"
        retired.mkdir(exist_ok=True)
        old_id = key_id(old.public_key())
        (retired / f"{old_id}.pub.pem").write_text(public_pem(old.public_key()))
        write_private_key(store.path, new, replace=True)
    return Rotation(
        key_id(new.public_key()), key_id(old.public_key()) if old is not None else None, old is not None, event_id
    )
