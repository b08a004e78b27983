"""Verified monthly figures: totals per metering channel, site indicators, signed reports, verification.

The method a certifier can cite is `docs/certification.md`. Modules (the pure ones — no agent runtime,
standard library + `cryptography` + `rfc8785` — are what `gia verify` imports, so a certifier recomputes
with the gateway's own arithmetic):

* pure: `periods` (civil months), `exact` (integers, decimal strings, no floats), `compute` (one channel's
  month: step validation, boundaries, intervals, coverage, VEE), `policy` (thresholds and grading of
  claims), `report` (indicators, balance cross-check, assembly), `events` (what is read from the ledger's
  events chain: meter replacements, closed months, reissue rule), `keys` (key-transition statements,
  pinned keys), `merkle`, `solar`, `signing`, `bundle` (evidence file formats), `verify` (offline checks),
  `area` (area reports, signed by the aggregator);
* gateway side: `config` (the `certification:` section), `source` (read-only ledger access, meter
  replacement records), `archive` (closed months' reports inside the ledger), `sitekeys` (when a site key
  may be created, `gia keys rotate`), `service` (`ReportService` for the API, agent and CLI), `pdf`, `cli`.
"""
