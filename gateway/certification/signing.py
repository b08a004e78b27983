"""Site signing key (Ed25519), canonical report bytes and signatures.

* The private key lives under `<data_dir>/keys/` with mode 0600 (directory 0700) and is never returned
  by any function here except to sign a key-transition statement (`private_key_for_rotation`):
  `KeyStore` exposes signing and the public key.
* The signature covers the RFC 8785 (JCS) canonical JSON of the report without its `signature` member;
  `signature = {alg: "Ed25519", key_id: hex SHA-256 of the raw 32-byte public key, value: base64}`.
* Floats are refused before signing (`assert_no_float`): canonicalisation would re-write them.

Imports only the standard library, `cryptography` and `rfc8785`: `gia verify` uses the verifying half.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any, Final

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drivers.errors import GiaError
from gateway.certification.exact import assert_no_float

ALG: Final = "Ed25519"
KEY_FILE: Final = "site-ed25519.pem"


class KeyFileError(GiaError):
    """A key file is unusable (wrong type, unreadable, too open)."""

    exit_code = 2


def canonical(obj: Any, *, float_free: bool = False) -> bytes:
    """RFC 8785 bytes of `obj`, refusing floats. `float_free=True`: the caller has already established
    that `obj` holds no float (the verifier counts them while parsing the report's bytes), so the walk of
    `assert_no_float` — a third of the canonicalisation's time on a report — is not done twice."""
    if not float_free:
        assert_no_float(obj)
    return bytes(rfc8785.dumps(obj))


def signing_bytes(report: dict[str, Any], *, float_free: bool = False) -> bytes:
    """What the signature covers: the canonical report without `signature` (`float_free`: see `canonical`)."""
    return canonical({k: v for k, v in report.items() if k != "signature"}, float_free=float_free)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_pem(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def verify_signature(report: dict[str, Any], public: Ed25519PublicKey, *, float_free: bool = False) -> str | None:
    """None when the signature is good, else what is wrong (with both sides where there are two).
    `float_free`: the caller has established that `report` holds no float (see `canonical`)."""
    sig = report.get("signature")
    if not isinstance(sig, dict):
        return "report has no signature object"
    extra = sorted(set(sig) - {"alg", "key_id", "value"})
    if extra:
        # the signature object is not covered by the signature: anything else in it is unsigned data
        return f"signature object carries unsigned extra field(s) {', '.join(extra)}"
    if sig.get("alg") != ALG:
        return f"signature alg {sig.get('alg')!r} != {ALG!r}"
    expected_id = key_id(public)
    if sig.get("key_id") != expected_id:
        return f"signature key_id {sig.get('key_id')} != published key {expected_id}"
    try:
        value = base64.b64decode(str(sig.get("value", "")), validate=True)
    except ValueError:
        return "signature value is not base64"
    try:
        public.verify(value, signing_bytes(report, float_free=float_free))
    except InvalidSignature:
        return "Ed25519 signature does not match the canonical report bytes (report altered after signing)"
    return None


class KeyMissing(KeyFileError):
    """The signing key file is gone and must not be silently replaced (see `sitekeys`)."""

    exit_code = 1
    http_status = 503
    error_code = "signing_key_missing"


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_key(path: Path, key: Ed25519PrivateKey, *, replace: bool) -> bool:
    """Write `key` to `path` (mode 0600) as a complete file under a private name, then link or rename it
    into place: a concurrent reader sees the old key or the new one, never half a file. With
    `replace=False` an existing file wins (returns False)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{id(key)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_private_pem(key))
        f.flush()
        os.fsync(f.fileno())
    try:
        if replace:
            os.replace(tmp, path)
            return True
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class KeyStore:
    """A key pair under `keys_dir`; the private key never leaves this object.

    `create=True` (the hub, tests): created on first use. The site's report service passes
    `create=False`: a missing site key raises `KeyMissing` instead of quietly becoming a new key
    (`sitekeys` decides when a key may be created). The file is re-read when it changes, so a running
    agent signs with the key `gia keys rotate` installed.
    """

    def __init__(self, keys_dir: Path, *, create: bool = True) -> None:
        self._dir = Path(keys_dir)
        self._create = create
        self._private: Ed25519PrivateKey | None = None
        self._stamp: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return self._dir / KEY_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def _load_or_create(self) -> Ed25519PrivateKey:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if st is not None and self._private is not None and self._stamp == (st.st_ino, st.st_mtime_ns):
            return self._private
        if st is None:
            if not self._create:
                raise KeyMissing(
                    f"{self.path}: the site's signing key is missing; a gateway with an existing ledger does not"
                    " make a new one silently: restore keys/ from a backup, or run"
                    " 'gia keys rotate --reason TEXT' (certifiers must then pin the new key)"
                )
            self._dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self._dir, 0o700)
            write_private_key(self.path, Ed25519PrivateKey.generate(), replace=False)
            st = self.path.stat()
        data = self.path.read_bytes()
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{self.path}: not a usable private key ({exc}); move it aside") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise KeyFileError(f"{self.path}: expected an Ed25519 key, got {type(loaded).__name__}") from None
        if st.st_mode & 0o077:
            os.chmod(self.path, 0o600)
        self._private = loaded
        self._stamp = (st.st_ino, st.st_mtime_ns)
        return loaded

    def private_key_for_rotation(self) -> Ed25519PrivateKey | None:
        """The current private key, for signing a key-transition statement only (None when missing)."""
        if not self.exists():
            return None
        return self._load_or_create()

    def public_key(self) -> Ed25519PublicKey:
        return self._load_or_create().public_key()

    def public_info(self) -> dict[str, str]:
        pub = self.public_key()
        return {"alg": ALG, "key_id": key_id(pub), "fingerprint": key_id(pub), "public_key_pem": public_pem(pub)}

    def sign_report(self, report: dict[str, Any]) -> dict[str, Any]:
        """A copy of `report` with its `signature` set."""
        key = self._load_or_create()
        body = {k: v for k, v in report.items() if k != "signature"}
        value = key.sign(signing_bytes(body))
        return {
            **body,
            "signature": {
                "alg": ALG,
                "key_id": key_id(key.public_key()),
                "value": base64.b64encode(value).decode(),
            },
        }
