"""deploy/requirements*.lock: install.sh installs the agent's dependencies only from these files
(`pip install --require-hashes`), so they must pin every runtime dependency pyproject.toml declares, at a
version its specifier allows, with hashes. A dependency added to pyproject.toml without `make lock` would
make the installer's `pip check` fail on the site; this test fails first."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.helpers import DEPLOY, INSTALL_SH, REPO

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*\\?$")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def _lock(name: str) -> dict[str, tuple[Version, int]]:
    """package -> (pinned version, number of hashes)."""
    out: dict[str, tuple[Version, int]] = {}
    current = None
    for line in (DEPLOY / name).read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            assert current not in out, f"{name}: {current} pinned twice"
            out[current] = (Version(m.group(2)), 0)
        elif current and HASH.search(line):
            version, n = out[current]
            out[current] = (version, n + len(HASH.findall(line)))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{name}: not a pin, a hash or a comment: {line!r}")
    return out


def _declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ()), ("requirements-extras.lock", ("forecast", "flex"))]
)
def test_lock_pins_every_runtime_dependency_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    pins = _lock(lock)
    assert len(pins) > 30
    for req in _declared(*extras):
        if req.marker is not None and not req.marker.evaluate(
            {"python_version": "3.11", "platform_machine": "aarch64"}
        ):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} does not pin {req} (pyproject.toml): run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{lock} pins {name}=={version}, pyproject says {req}"
    unhashed = [n for n, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"{lock}: pinned without a hash: {unhashed}"


def test_extras_lock_agrees_with_the_agent_lock() -> None:
    """The two locks resolve the shared packages alike: --extras does not move the agent's own dependencies."""
    base, extras = _lock("requirements.lock"), _lock("requirements-extras.lock")
    moved = {n: (v, extras[n][0]) for n, (v, _) in base.items() if n in extras and extras[n][0] != v}
    missing = sorted(set(base) - set(extras))
    assert not missing, f"requirements-extras.lock lacks {missing}"
    assert not moved, f"versions differ between the locks: {moved}"


def test_installer_installs_from_the_lock_with_hashes() -> None:
    text = INSTALL_SH.read_text()
    assert '"${pip[@]}" install -q --require-hashes -r "$lock"' in text
    assert '"${pip[@]}" install -q --no-deps --force-reinstall "$SOURCE"' in text
    # the package itself never pulls an unlocked dependency
    assert not re.search(r'pip\[@\]\}" install -q --upgrade "\$spec"', text)
