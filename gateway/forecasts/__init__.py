"""The forecasting room: the agent's side of forecasting (history from the ledger, training in a child
process, rounds that predict and publish) and the flexibility signal computed from the forecasts."""
