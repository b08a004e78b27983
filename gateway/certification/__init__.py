"""Verified monthly figures: totals per metering channel, site indicators, signed reports, verification.

Modules (the pure ones — no agent runtime, standard library + `cryptography` + `rfc8785` — are what
`gia verify` imports, so a certifier recomputes with the gateway's own arithmetic):

* pure: `periods` (civil months), `exact` (integers, decimal strings, no floats), `compute` (one channel's
  month), `report` (indicators, grade, Merkle summary, assembly), `merkle`, `solar`, `signing`, `bundle`
  (evidence file formats), `verify` (offline checks), `area` (area reports);
* gateway side: `config` (the `certification:` section), `source` (read-only ledger access, meter
  replacement events), `service` (`ReportService` for the API, agent and CLI), `pdf`, `cli`.
"""
