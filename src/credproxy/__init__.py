"""credproxy: a host-side credential broker for sandboxed programs.

The host daemon owns every secret; sandboxed processes reach it over one Unix
socket and receive only what their grant allows, never a refresh token.
"""

__version__ = "0.1.0"
