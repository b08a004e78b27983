"""The site, resolved once: devices with their loaded maps, metering channels, roles and the balance.

Kept import-light on purpose: `gateway.site.channels` and `gateway.site.balance` are pure standard
library (the offline verifier imports them), while `gateway.site.resolve` (which loads device maps)
is imported only by the agent and the CLI. Import from the submodules, not from here.
"""
