"""Redis-backed shared state: cached upstream values, single-flight locks, console records."""
