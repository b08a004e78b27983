"""Backups an operator can trust: config, ledger (with its archive of closed reports), report copies and
the site's public keys in one tarball — and the private signing key only when asked.

The ledger is copied with SQLite's online backup API, so a backup taken while the agent writes is
consistent. `restore` verifies the ledger's hash chain before it puts anything in place, refuses while an
agent holds the data directory's lock, and never silently replaces a signing key or ledger (`--force`).

The private key: whoever holds it can sign reports as the site. A backup leaves it out by default (the
public key and the retired public keys go in, for reference); `--include-key` puts it in *encrypted with
a passphrase* (PKCS#8, the `cryptography` library's best available encryption: scrypt + AES-256). A site
restored without its key refuses to start until `gia keys rotate --reason`, which certifiers see in the
events chain (an unsigned transition: they pin the new key).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from drivers.errors import GiaError
from gateway.ledger.store import Ledger

LOCK_NAME = "agent.lock"
KEY_FILE = "site-ed25519.pem"


class BackupError(GiaError):
    """A backup or restore that cannot proceed; the message says why and what to do."""


def acquire_agent_lock(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data directory for the agent's lifetime (one agent per ledger)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = (data_dir / LOCK_NAME).open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise BackupError(f"another gia agent is running on {data_dir}; stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def agent_running(data_dir: Path) -> bool:
    path = data_dir / LOCK_NAME
    if not path.exists():
        return False
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _encrypted_key(keys: Path, passphrase: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((keys / KEY_FILE).read_bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def _public_pem(keys: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((keys / KEY_FILE).read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_file(path: Path) -> IO[bytes]:
    """A new file only its owner can read, 0600 from its first byte (not chmod-ed after writing: until
    then the config, the secrets' paths and the encrypted key would be world-readable). A stale file or a
    symlink planted at `path` is removed, never followed."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask; a umask can only remove bits, but be exact
    return os.fdopen(fd, "wb")


def create_bundle(
    dest: Path,
    *,
    config: Path,
    data_dir: Path,
    ledger_path: Path,
    include_key: bool = False,
    passphrase: bytes | None = None,
) -> list[str]:
    """Write `dest` (.tar.gz): gia.yaml, ledger.db, reports/, keys/ (public keys; the private key only
    with `include_key`, encrypted with `passphrase`). Returns the member names."""
    if include_key and not passphrase:
        raise BackupError("--include-key needs a passphrase (--passphrase-file FILE): the key is stored encrypted")
    members: list[str] = []
    keys = data_dir / "keys"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "ledger.db"
        if ledger_path.exists():
            led = Ledger(ledger_path)
            try:
                led.backup(copy)
            finally:
                led.close()
        tmp_dest = dest.with_name(dest.name + ".tmp")
        with _private_file(tmp_dest) as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(config, arcname="gia.yaml")
            members.append("gia.yaml")
            if copy.exists():
                tar.add(copy, arcname="ledger.db")
                members.append("ledger.db")
            if (data_dir / "reports").is_dir():
                tar.add(data_dir / "reports", arcname="reports")
                members.append("reports/")
            if keys.is_dir():
                if (keys / "retired").is_dir():
                    tar.add(keys / "retired", arcname="keys/retired")
                if (keys / KEY_FILE).is_file():
                    pub = Path(tmp) / "site-public.pem"
                    pub.write_bytes(_public_pem(keys))
                    tar.add(pub, arcname="keys/site-public.pem")
                    if include_key:
                        assert passphrase is not None
                        enc = Path(tmp) / (KEY_FILE + ".enc")
                        enc.write_bytes(_encrypted_key(keys, passphrase))
                        tar.add(enc, arcname=f"keys/{KEY_FILE}.enc")
                        members.append(f"keys/{KEY_FILE}.enc (encrypted)")
                members.append("keys/ (public)")
        tmp_dest.replace(dest)
    return members


def restore_bundle(
    src: Path, *, config: Path, data_dir: Path, ledger_path: Path, force: bool, passphrase: bytes | None = None
) -> list[str]:
    """Put a bundle's ledger, keys and reports in place; the bundled config goes beside the live one.
    An encrypted private key is decrypted with `passphrase` and written 0600."""
    if agent_running(data_dir):
        raise BackupError(f"a gia agent is running on {data_dir}; stop it (systemctl stop gia) and retry")
    if not force and (ledger_path.exists() or (data_dir / "keys").exists()):
        raise BackupError(f"{data_dir} already holds a ledger or keys; pass --force to replace them")
    done: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(src, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
        root = Path(tmp)
        if (root / "ledger.db").exists():
            led = Ledger(root / "ledger.db")  # opening migrates an older schema in the copy
            try:
                check, events = led.verify(), led.verify_events()
            finally:
                led.close()
            for c in (check, events):
                if not c.ok:
                    raise BackupError(f"the ledger in {src} does not verify ({c.problem}); not restored")
        # the key is decrypted before anything is put in place: a wrong passphrase restores nothing
        enc = root / "keys" / (KEY_FILE + ".enc")
        plain: bytes | None = None
        if enc.is_file():
            if not passphrase:
                raise BackupError(f"the signing key in {src} is encrypted: pass --passphrase-file FILE")
            from cryptography.hazmat.primitives import serialization

            try:
                key = serialization.load_pem_private_key(enc.read_bytes(), password=passphrase)
            except (ValueError, TypeError):
                raise BackupError(f"the passphrase does not decrypt the signing key in {src}") from None
            plain = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            enc.unlink()
        data_dir.mkdir(parents=True, exist_ok=True)
        if (root / "ledger.db").exists():
            for suffix in ("-wal", "-shm"):
                Path(str(ledger_path) + suffix).unlink(missing_ok=True)
            shutil.copy2(root / "ledger.db", ledger_path)
            done.append(str(ledger_path))
        for sub in ("keys", "reports"):
            if (root / sub).is_dir():
                shutil.rmtree(data_dir / sub, ignore_errors=True)
                shutil.copytree(root / sub, data_dir / sub)
                done.append(str(data_dir / sub))
        if plain is not None:
            fd = os.open(data_dir / "keys" / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(plain)
            done.append(str(data_dir / "keys" / KEY_FILE))
        if (root / "gia.yaml").exists():
            target = config.with_name(config.name + ".from-backup")
            target.write_bytes((root / "gia.yaml").read_bytes())
            done.append(str(target))
    keys = data_dir / "keys"
    if keys.is_dir():
        keys.chmod(0o700)
        for entry in keys.rglob("*"):
            entry.chmod(0o700 if entry.is_dir() else 0o600)
    return done


__all__ = ["BackupError", "acquire_agent_lock", "agent_running", "create_bundle", "restore_bundle"]
