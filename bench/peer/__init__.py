"""The peer: what a Python developer would deploy instead of Identify."""
