"""How long the fuzz tests run: bounded in the normal suite, longer with GIA_FUZZ=long.

The normal suite keeps every fuzz test to a few seconds (all of tests/fuzz under ~60 s on the CI
machine). `GIA_FUZZ=long` multiplies the hypothesis example counts and lets the atheris targets run
for `GIA_FUZZ_SECONDS` each (default 300).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("GIA_FUZZ") == "long"


def examples(normal: int) -> settings:
    """hypothesis settings with `normal` examples (x50 with GIA_FUZZ=long), no deadline."""
    return settings(
        max_examples=normal * 50 if LONG else normal,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def atheris_seconds() -> int:
    return int(os.environ.get("GIA_FUZZ_SECONDS", "300")) if LONG else 5
