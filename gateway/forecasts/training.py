"""Model training in a short-lived child process, so the agent's pollers and sinks keep their core.

Why a process and not a thread: scikit-learn's boosting loop holds the GIL for much of each iteration.
In a thread of a busy agent (the demo at 30x time forwarding its 30-day backfill) a first model took
17 s instead of 4 s, and polling and forwarding were slowed for as long. A child process runs on the
other core at full speed, gives its peak memory (~270 MB on a year of history) back to the OS when it
ends, and a stopping agent kills it at once instead of waiting for a fit to finish. The price is ~2.5 s
of imports per training, against work done once at first start and then nightly.

The child gets the agent's settings and site channels pickled on stdin (never on disk or the command
line: the settings hold credentials), builds the same `ForecastService` without a trainer, trains,
saves the artifact where the agent's service loads it from, and pickles the `TrainResult` to stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forecasting.config import TargetName
    from forecasting.service import ForecastService, TrainResult
    from gateway.settings import Settings

log = logging.getLogger(__name__)
CANCELLED = "training cancelled (stopping)"


def build_service(settings: Settings, channels: Sequence[Any], *, trainer: Any = None) -> ForecastService:
    """The site's forecast service: ledger history, weather provider and artifact directory from settings."""
    from forecasting.service import ForecastService, make_weather_provider
    from gateway.forecasts.history import LedgerHistory

    cfg = settings.forecasting
    loc = cfg.location or settings.site.location
    models = cfg.artifact_dir or settings.data_dir / "models"
    return ForecastService(
        cfg,
        LedgerHistory(settings.ledger_path, channels),
        artifact_dir=models,
        weather=make_weather_provider(
            cfg,
            latitude=loc.latitude if loc else None,
            longitude=loc.longitude if loc else None,
            archive_dir=models,
        ),
        timezone=settings.site.timezone,
        latitude=loc.latitude if loc else None,
        longitude=loc.longitude if loc else None,
        trainer=trainer,
    )


class ProcessTrainer:
    """`forecasting.service.Trainer` that runs each training in `python -m gateway.forecasts.training`."""

    def __init__(self, settings: Settings, channels: Sequence[Any]) -> None:
        # A room added at run time extends the settings with a class made on the fly (settings_class), which
        # pickle cannot name: the child gets the built-in model, which holds everything forecasting reads.
        from gateway.settings import Settings as BaseModelOfSettings

        if type(settings) is not BaseModelOfSettings:
            settings = BaseModelOfSettings.model_construct(
                **{k: getattr(settings, k) for k in BaseModelOfSettings.model_fields}
            )
        self._payload = pickle.dumps((settings, list(channels)))
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopped = False

    def __call__(self, target: TargetName, now: datetime | None, quick: bool) -> TrainResult:
        from forecasting.service import TrainResult

        root = logging.getLogger()
        fmt = "json" if any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers) else "text"
        with self._lock:
            if self._stopped:
                return TrainResult(target, False, CANCELLED)
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.forecasts.training", logging.getLevelName(root.level).lower(), fmt],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._running.add(proc)
        try:
            out, _ = proc.communicate(pickle.dumps((self._payload, target, now, quick)))
        finally:
            with self._lock:
                self._running.discard(proc)
        if self._stopped:
            return TrainResult(target, False, CANCELLED)
        if proc.returncode != 0:
            log.error("forecasting: the training process for %s failed (exit code %s)", target, proc.returncode)
            return TrainResult(target, False, f"training process failed (exit code {proc.returncode})")
        result: TrainResult = pickle.loads(out)  # our own child's answer over a private pipe
        return result

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for proc in self._running:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the agent dies (SIGKILL, power cut of the service)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def main(argv: Sequence[str]) -> int:
    # The result goes to the real stdout; anything a library prints lands on stderr instead of in it.
    result_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the demo's terminal: the agent stops us
    _die_with_parent()
    from gateway.runtime.logs import setup_logging

    setup_logging(level=argv[0] if argv else "info", fmt=argv[1] if len(argv) > 1 else "text")
    payload, target, now, quick = pickle.load(sys.stdin.buffer)
    settings, channels = pickle.loads(payload)
    result = build_service(settings, channels).train(target, now=now, quick=quick)
    pickle.dump(result, result_out)
    result_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
