"""`gia backup FILE.tar.gz` never exists world-readable, not even while it is being written.

The bundle holds the config (secret file paths, device addresses) and, with `--include-key`, the encrypted
signing key. A file created with the process umask (0644 on Debian) and chmod-ed to 0600 only after the
last byte could be opened by any local user meanwhile, and a file descriptor opened then stays valid after
the chmod. The test runs the real CLI under umask 022 on a data directory big enough that writing takes a
while (incompressible report copies) and watches the temporary file from outside the process the whole time.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

from gateway.ledger.store import Ledger


def _watch(path: Path, modes: list[int], stop: threading.Event) -> None:
    """Record every permission mode `path` is seen with until `stop` is set."""
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError):
            modes.append(stat.S_IMODE(os.lstat(path).st_mode))
        stop.wait(0.0005)


def test_backup_bundle_is_0600_from_the_first_byte(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "reports").mkdir(parents=True)
    Ledger(data / "ledger.db").close()
    # ~24 MB that gzip cannot shrink: the bundle takes a noticeable time to write (0.3 s or more here)
    for k in range(6):
        (data / "reports" / f"r{k}.bin").write_bytes(os.urandom(4 << 20))
    config = tmp_path / "gia.yaml"
    config.write_text(f"site: {{id: bk}}\ndata_dir: {data}\nhttp: {{enabled: false}}\n")
    dest = tmp_path / "out" / "backup.tar.gz"
    dest.parent.mkdir()
    (dest.parent / "backup.tar.gz.tmp").symlink_to(tmp_path / "planted")  # a planted link is not followed

    modes: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(dest.with_name("backup.tar.gz.tmp"), modes, stop), daemon=True)
    watcher.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    try:
        result = subprocess.run(
            ["bash", "-c", 'umask 022 && exec "$@"', "bash", sys.executable, "-m", "gateway", "backup", str(dest),
             "--config", str(config)],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "planted").exists(), "the backup followed a symlink planted at its temporary name"
    written = [m for m in modes if m != 0o777]  # 0o777: the planted symlink itself, before it was removed
    assert written, "the temporary bundle was never seen: the test observed nothing"
    assert set(written) == {0o600}, f"the bundle was readable by others while written: modes {sorted(set(written))}"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
