"""The area hub (`gia hub`): an industrial area's gateways report to one place that pins their keys,
verifies every report on arrival, anchors it in a transparency log and answers with a receipt.

Modules: `config` (the `hub:` section), `db` (schema, migrations, the write lock), `log` (RFC 9162
Merkle tree, pure), `verifier` (the one adapter over `gateway.certification.verify`), `store`
(records), `ingest` (decisions), `mqtt` and `api` (transports), `service` (the composition: parts and
health), `cli` (`gia hub ...`).
"""
