"""One message catalogue for the page, the PDF summary and the command line: English and Latvian.

Why gettext catalogues read with Babel: translators (and the Latvian pilot sites) know the `.po`
format, Babel reads it without a compile step (no binary `.mo` in the repository) and formats numbers
and dates by CLDR locale data, so "12 345,6 kWh" and "3. dec. 2026, 14:05" come out as a Latvian reads
them. English is the source language: its catalogue is the identity.

Nothing here is global: a `Catalogues` object loads each language once and is held by whoever serves
(the HTTP app) or runs (a CLI command). `negotiate` picks the language from a cookie, then the
browser's `Accept-Language`; `from_environment` from `LANGUAGE`, `LC_ALL`, `LC_MESSAGES` and `LANG`,
as gettext does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

LANGUAGES: Final = ("en", "lv")
DEFAULT: Final = "en"
#: Native names, for the language switch (each language named in itself).
NATIVE_NAMES: Final = {"en": "English", "lv": "Latviešu"}

CATALOGUE_DIR: Final = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Translator:
    """Messages and number/date formats of one language."""

    lang: str
    messages: Mapping[str, str] = field(default_factory=dict)

    def gettext(self, message: str) -> str:
        """The translation of `message`, or `message` itself (English, or not yet translated)."""
        return self.messages.get(message) or message

    def __call__(self, message: str, **values: object) -> str:
        """`t("{n} devices", n=3)`: translate, then fill the named fields."""
        text = self.gettext(message)
        return text.format(**values) if values else text

    def number(self, value: float, digits: int = 0) -> str:
        from babel.numbers import format_decimal

        fmt = "#,##0" + ("." + "0" * digits if digits > 0 else "")
        return str(format_decimal(value, format=fmt, locale=self.lang))

    def percent(self, share: float | None, digits: int = 0) -> str:
        """0.734 -> '73 %' (a space before the sign, as both languages write it)."""
        if share is None:
            return "—"
        return f"{self.number(share * 100, digits)} %"

    def datetime(self, when: datetime, timezone: str, *, seconds: bool = False) -> str:
        """A date and time in the site's zone, in this language's medium format, with the zone's name."""
        from babel.dates import format_datetime

        local = when.astimezone(ZoneInfo(timezone))
        pattern = "yyyy-MM-dd HH:mm" + (":ss" if seconds else "")
        return f"{format_datetime(local, pattern, locale=self.lang)} ({timezone})"


def _read_po(path: Path) -> dict[str, str]:
    from babel.messages.pofile import read_po

    with path.open("rb") as fh:
        catalog = read_po(fh, locale=path.stem)
    out: dict[str, str] = {}
    for msg in catalog:
        if msg.id and isinstance(msg.id, str) and isinstance(msg.string, str) and msg.string and not msg.fuzzy:
            out[msg.id] = msg.string
    return out


class Catalogues:
    """Loads each language's catalogue once (thread-safe: the API renders in worker threads too)."""

    def __init__(self, directory: Path = CATALOGUE_DIR) -> None:
        self._dir = directory
        self._loaded: dict[str, Translator] = {}
        self._lock = threading.Lock()

    def get(self, lang: str) -> Translator:
        lang = lang if lang in LANGUAGES else DEFAULT
        with self._lock:
            found = self._loaded.get(lang)
            if found is None:
                po = self._dir / f"{lang}.po"
                found = Translator(lang, _read_po(po) if lang != DEFAULT and po.is_file() else {})
                self._loaded[lang] = found
            return found


def _lang_of(tag: str) -> str | None:
    base = tag.strip().replace("_", "-").split("-")[0].split(".")[0].lower()
    return base if base in LANGUAGES else None


def negotiate(accept_language: str | None, chosen: str | None = None) -> str:
    """The page's language: the user's choice (cookie), else the best of `Accept-Language`, else English."""
    if chosen and chosen in LANGUAGES:
        return chosen
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.partition(";")
        lang = _lang_of(tag)
        if lang is None:
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            ranked.append((q, -position, lang))
    return max(ranked)[2] if ranked else DEFAULT


def from_environment(env: Mapping[str, str] | None = None) -> str:
    """The command line's language, as gettext chooses it: LANGUAGE, LC_ALL, LC_MESSAGES, then LANG."""
    env = os.environ if env is None else env
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name, "")
        if not value:
            continue
        for part in value.split(":"):  # LANGUAGE may list several
            lang = _lang_of(part)
            if lang is not None:
                return lang
        if value not in ("C", "POSIX", "C.UTF-8"):
            return DEFAULT
    return DEFAULT


def cli_translator(env: Mapping[str, str] | None = None) -> Translator:
    """The translator a command uses for what it prints to people (never for --json output)."""
    return Catalogues().get(from_environment(env))


__all__ = [
    "LANGUAGES",
    "NATIVE_NAMES",
    "Catalogues",
    "Translator",
    "cli_translator",
    "from_environment",
    "negotiate",
]
