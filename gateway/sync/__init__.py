"""Reconciliation with the providers' own bills.

The gateway knows what passed through it (the usage ledger); the providers' organisation
reports say what was used and billed. `openai_admin` and `anthropic_admin` read those
reports with an admin key (`integrations` says which keys; `client` pages through them),
`importer` stores them day by day in `store` (idempotent, resumable), `scheduler` runs the
imports on one replica at a time, and `report` lines both sides up for `reconcile`, which
names the differences: spend around the gateway, wrong prices, and day-boundary timing.
"""
