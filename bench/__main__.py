"""``make bench``: print the figures (nothing here is a pass/fail test)."""

from bench import embedded

embedded.main()
