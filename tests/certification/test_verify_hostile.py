"""`gia verify` on hostile bundles: bounded memory, and exit 2 with a sentence instead of a traceback.

A certifier runs `gia verify` on files a site sends. A 204 KB zip whose readings inflate to hundreds of MB
once made it allocate 458 MB; a JSON document nested 100 000 deep raised RecursionError with a traceback.
Each case runs the real CLI in a child process; memory is its peak RSS (getrusage of the children of a
small wrapper process, so nothing else the test session ran is counted), compared with the peak of a
verify of a genuine bundle measured in the same test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from gateway.certification import bundle

from .test_signing_verify import site  # noqa: F401 - the module-scoped fixture: a signed month and its evidence

# Runs argv, then prints the child's exit code, its peak RSS (KiB) and its output as one JSON line.
WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps({'rc': r.returncode, 'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
    " 'out': r.stdout, 'err': r.stderr}))\n"
)


def _gia_verify(*args: str | Path) -> dict[str, Any]:
    argv = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "gateway", "verify", *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _bomb(path: Path, site_dir: Path, inflated_mb: int) -> None:
    """The genuine report beside a readings.jsonl of blanks that deflate about 1000:1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(site_dir / "evidence" / "report.json", "report.json")
        with z.open("readings.jsonl", "w", force_zip64=True) as f:
            chunk = b" " * (1 << 20)
            for _ in range(inflated_mb):
                f.write(chunk)


def _assert_unusable(result: dict[str, Any], *words: str) -> None:
    assert result["rc"] == 2, result
    assert "Traceback" not in result["err"] + result["out"], result["err"]
    assert "unusable input" in result["out"], result
    for w in words:
        assert w in result["out"], result["out"]


def test_zip_bomb_is_refused_within_the_memory_of_a_normal_verify(site: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    d = site["dir"]
    good = tmp_path / "good.zip"
    good.write_bytes(site["svc"].evidence_zip("s1", "2025-03"))
    baseline = _gia_verify(d / "evidence" / "report.json", "--public-key", d / "site.pem", "--evidence", good)
    assert baseline["rc"] == 0, baseline

    bomb = tmp_path / "bomb.zip"
    _bomb(bomb, d, inflated_mb=200)
    assert bomb.stat().st_size < 400_000  # a few hundred KB on the wire
    hostile = _gia_verify(d / "evidence" / "report.json", "--public-key", d / "site.pem", "--evidence", bomb)
    _assert_unusable(hostile, "zip bomb")
    # before the bound this verify peaked at about 3 x the 200 MB inflated; now within 48 MB of a normal verify
    extra_mib = (hostile["rss_kib"] - baseline["rss_kib"]) / 1024
    assert extra_mib < 48, f"peak RSS {hostile['rss_kib']} KiB vs {baseline['rss_kib']} KiB for a genuine bundle"


def test_genuine_evidence_is_far_below_the_ratio_limit(site: dict[str, Any]) -> None:  # noqa: F811
    """The zip-bomb ratio leaves real evidence a wide margin: its members compress only a few times."""
    import io

    with zipfile.ZipFile(io.BytesIO(site["svc"].evidence_zip("s1", "2025-03"))) as z:
        ratios = {i.filename: i.file_size / max(1, i.compress_size) for i in z.infolist() if i.file_size > 4096}
    assert ratios
    assert max(ratios.values()) < bundle.MAX_RATIO / 4, ratios


def test_too_many_members_and_duplicates_are_refused(site: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    d = site["dir"]
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        z.write(d / "evidence" / "readings.jsonl", "readings.jsonl")
        for k in range(bundle.MAX_MEMBERS + 1):
            z.writestr(f"x/{k}", b"")
    _assert_unusable(
        _gia_verify(d / "evidence" / "report.json", "--public-key", d / "site.pem", "--evidence", many),
        "files in the zip",
    )
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as z:
        z.write(d / "evidence" / "readings.jsonl", "readings.jsonl")
        z.write(d / "evidence" / "readings.jsonl", "a/readings.jsonl")
    _assert_unusable(
        _gia_verify(d / "evidence" / "report.json", "--public-key", d / "site.pem", "--evidence", dup),
        "two files named",
    )


def test_truncated_zip_is_unusable(site: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    d = site["dir"]
    data = site["svc"].evidence_zip("s1", "2025-03")
    cut = tmp_path / "cut.zip"
    # keep the central directory (so it is still a zip) but damage the first member's compressed bytes
    damaged = bytearray(data)
    damaged[100:4000] = bytes(3900)
    cut.write_bytes(bytes(damaged))
    _assert_unusable(_gia_verify(d / "evidence" / "report.json", "--public-key", d / "site.pem", "--evidence", cut))


DEEP = 100_000


@pytest.mark.parametrize(
    "where",
    ["report", "report_field", "previous", "readings_line", "policy", "trusted_keys"],
)
def test_deeply_nested_json_exits_2_without_a_traceback(site: dict[str, Any], tmp_path: Path, where: str) -> None:  # noqa: F811
    d = site["dir"]
    deep = "[" * DEEP + "]" * DEEP
    ev = tmp_path / "ev"
    ev.mkdir()
    for name in ("report.json", "readings.jsonl", "events.jsonl", "intervals.csv"):
        src = d / "evidence" / name
        if src.exists():
            (ev / name).write_bytes(src.read_bytes())
    report = ev / "report.json"
    args: list[str | Path] = ["--public-key", d / "site.pem", "--evidence", ev]
    if where == "report":
        report.write_text(deep)
    elif where == "report_field":
        doc = json.loads(report.read_text())
        report.write_text(json.dumps(doc)[:-1] + f', "x": {deep}}}')
    elif where == "previous":
        (tmp_path / "prev.json").write_text('{"a": ' + deep + "}")
        args += ["--previous", tmp_path / "prev.json"]
    elif where == "readings_line":
        with (ev / "readings.jsonl").open("a") as f:
            f.write(deep + "\n")
    elif where == "policy":
        (tmp_path / "policy.json").write_text(deep)
        args += ["--policy", tmp_path / "policy.json"]
    elif where == "trusted_keys":
        (tmp_path / "keys.json").write_text(deep)
        args = ["--trusted-keys", tmp_path / "keys.json", "--evidence", ev]
    result = _gia_verify(report, *args)
    assert result["rc"] == 2, result
    assert "Traceback" not in result["err"] + result["out"], result["err"]
    assert "unusable input" in result["out"] or "nested too deeply" in result["out"], result["out"]
