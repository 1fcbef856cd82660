"""``make bench``: print the figures (nothing here is a pass/fail test)."""

from bench import embedded, services, sqlite_write, state_service

embedded.main()
print()
sqlite_write.main()
print()
state_service.main()
print()
services.main()
