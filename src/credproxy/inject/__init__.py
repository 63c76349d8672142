"""The credential-injecting HTTP proxy: the sandbox holds a stand-in, the host adds the secret.

A sandboxed program talks to a route's base URL with a stand-in credential
shaped like the real one; the host matches the route (method, path), puts the
real secret in the route's one slot, sends the request to the checked
upstream address and streams the answer back with every form of the secret
replaced by the stand-in. ``--intercept`` adds a CONNECT front with a per-run
CA for tools that cannot change their base URL.

This package imports nothing heavy at import time: ``relay`` runs inside
sandboxes on the standard library alone.
"""
