"""Every message the page, the PDF and the command line show, extracted from the sources (gettext style).

Python: calls `t("...")` / `t.gettext("...")` / `_("...")` with a literal first argument (Babel's Python
extractor); JavaScript: `T("...")` (Babel's JavaScript extractor); HTML templates: `{{ ... }}`.
"""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.extract import extract_javascript, extract_python

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "gateway" / "api" / "static"
#: Python files whose user-facing messages are translated.
PY_FILES = [
    "gateway/api/pages.py",
    "gateway/certification/pdf.py",
    "gateway/cli_agent.py",
    "gateway/cli_devices.py",
    "gateway/cli_users.py",
    "gateway/certification/cli.py",
    "gateway/demo.py",
    "gateway/cli_options.py",
    "gateway/settings.py",
]


def extract() -> dict[str, str]:
    """msgid -> where it was found (first place)."""
    out: dict[str, str] = {}
    for html in sorted(STATIC.glob("*.html")):
        for m in re.finditer(r"\{\{\s*(.+?)\s*\}\}", html.read_text()):
            out.setdefault(m.group(1), html.name)
    for js in sorted(STATIC.glob("*.js")):
        if js.name.startswith("uplot"):
            continue
        with js.open("rb") as fh:
            for _line, _func, msg, _comments in extract_javascript(fh, ["T"], [], {"parse_template_string": True}):
                first = msg[0] if isinstance(msg, tuple) else msg
                if first:
                    out.setdefault(first, js.name)
    for rel in PY_FILES:
        path = ROOT / rel
        if not path.exists():
            continue
        with path.open("rb") as fh:
            for _line, _func, msg, _comments in extract_python(fh, ["t", "_", "gettext"], [], {}):
                first = msg[0] if isinstance(msg, tuple) else msg
                if first:
                    out.setdefault(first, rel)
    return out
