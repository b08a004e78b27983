"""The machinery parts run in: supervision, shutdown, clocks and their guards, disk, systemd, logs."""
