"""The HTTP API and the live web page, built by `create_app` from the agent's services."""
