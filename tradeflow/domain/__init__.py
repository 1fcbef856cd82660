"""The trading domain: records, errors, ids and clock, emergency rules. No I/O, no adapters."""
