"""The embedded adapters on one SQLite file: state, halts and limits, the paper ledger."""
