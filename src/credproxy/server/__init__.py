"""The host daemon: listener, connections, handlers and wiring."""
