"""GIA Gateway: the agent runtime, configuration, ledger, sinks, certification, HTTP API and CLI."""

__version__ = "0.1.0"
