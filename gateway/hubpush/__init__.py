"""The `hub` room: the gateway pushes its closed months' signed reports and its key transitions to the area
hub over HTTPS with its per-site token, from a cursor of its own, retrying until the hub acknowledges them
(for sites whose broker is not bridged to the hub's)."""
