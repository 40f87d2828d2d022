"""authZero: the provider (provider.py) and the slice of the Auth0
Management API it uses (management.py)."""
