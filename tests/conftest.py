"""Project-wide test setup: only registers the real-server fixtures of tests/servers.py."""

pytest_plugins = ["tests.servers"]
