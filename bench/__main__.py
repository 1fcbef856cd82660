"""``make bench``: print the figures (nothing here is a pass/fail test)."""

from bench import embedded, services, sqlite_write

embedded.main()
print()
sqlite_write.main()
print()
services.main()
