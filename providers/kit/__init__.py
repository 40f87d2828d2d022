"""What every provider shares, written once: settings readers, request
inputs, token rules, upstream HTTP calls, JWT/JWKS verification and the
social-provider base. Plug-ins write only how they differ."""
