"""``make bench``: print the figures (nothing here is a pass/fail test).

``python -m bench [name ...]`` prints only the named parts (all of them by default)."""

import sys

from bench import barrier, embedded, footprint, services, soak, sqlite_write, state_service

PARTS = {
    "embedded": embedded,
    "sqlite_write": sqlite_write,
    "state_service": state_service,
    "services": services,
    "barrier": barrier,
    "footprint": footprint,
    "soak": soak,
}

unknown = [name for name in sys.argv[1:] if name not in PARTS]
if unknown:
    sys.exit(f"unknown benchmark part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
for name in sys.argv[1:] or PARTS:
    PARTS[name].main()
    print()
