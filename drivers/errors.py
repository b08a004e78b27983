"""The one exception root of the project, and what each error means to a user.

Every error raised on purpose (a bad config, an unreadable device, a refused report request, a broken
ledger) derives from `GiaError` and says, as class attributes, how the command line exits
(`exit_code`: 1 failed, 2 unusable input or configuration) and how the HTTP API answers (`http_status`
and the JSON `error` code). The CLI and the API translate errors from these attributes alone, so a new
error needs no table elsewhere. It lives at the lowest layer (drivers/, beside the shared vocabulary in
model.py) because drivers must not import gateway/ and their errors belong to the same tree.

    GiaError
     ├── DriverError                 drivers/base.py: TransientError (BusyError), PermanentError
     ├── MapError                    drivers/maps: a device map that cannot be used
     ├── ConfigError                 gateway/settings.py: every problem of a configuration (exit 2)
     ├── LedgerError                 gateway/ledger: the ledger file is unusable
     ├── SinkError                   gateway/sinks: a transient delivery failure; SinkRejected: refused data
     ├── ReportError                 gateway/certification/service.py: UnknownSite 404, MalformedMonth 400,
     │                               MonthInFuture 400, LedgerUnavailable 503
     ├── BackupError, KeyFileError, BundleError, AreaError, Unusable (verify input)
     └── DataError, WeatherError     forecasting/
"""

from __future__ import annotations

from typing import ClassVar


class GiaError(Exception):
    """Root of every error the project raises on purpose; the message is fit for the user."""

    #: exit code of a command that ends with this error: 1 failed, 2 unusable input or configuration
    exit_code: ClassVar[int] = 1
    #: HTTP status when the API meets this error, and the JSON `error` code beside it
    http_status: ClassVar[int] = 500
    error_code: ClassVar[str] = "error"
