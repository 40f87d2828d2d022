"""Events: the audit trail (audit.py, its types in types.py, what a public
call records in calls.py), webhook endpoints (webhooks.py) and the relay that
delivers the trail to them (relay.py)."""
