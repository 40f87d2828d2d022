"""The admin API (identify.admin.v1.Admin) and the `identify admin` CLI:
admin keys and their scopes, projects, users, devices, logins, signing keys,
and the admin side of the audit trail and the webhooks."""
