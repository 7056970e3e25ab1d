"""api: the admin surface (auth, keys, analytics, nginx management) and `/healthz`."""
