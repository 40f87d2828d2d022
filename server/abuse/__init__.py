"""Abuse protection: rate limits per project and client IP on the routes that
create accounts or check credentials (counters.py), and per-account lockout
after repeated credential failures (lockout.py), both driven by each
project's `limits` (policy.py)."""
