"""OAuth on the host: provider configuration, PKCE, and the three login flows.

The sandbox only ever sees the URL to open (or the user code) and the
sanitized result; everything else stays in this package's objects.
"""
