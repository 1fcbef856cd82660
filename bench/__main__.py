"""``make bench``: print the figures (nothing here is a pass/fail test)."""

from bench import embedded, services, sqlite_write, state_service

for module in (embedded, sqlite_write, state_service, services):
    module.main()
    print()
