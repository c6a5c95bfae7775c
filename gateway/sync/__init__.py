"""Reconciliation with the providers' own bills.

The gateway knows what passed through it (the usage ledger); the providers' organisation
reports say what was used and billed. `openai_admin` and `anthropic_admin` read those
reports with an admin key, `importer` stores them day by day (idempotent, resumable),
`scheduler` runs the imports on one replica at a time, and `reconcile` names the
differences: spend around the gateway, wrong prices, and day-boundary timing.
"""
