"""Apps a test builds for servers of its own (a throwaway Redis): their background threads
(the principal cache's listener, the relay's hub and pulse) outlive the test unless stopped,
and would go on logging at a server that is gone, into the next tests' captured logs."""

from __future__ import annotations

from flask import Flask


def stop_background(app: Flask) -> None:
    app.extensions["principal_cache"].stop()
    relay = app.extensions["relay"]
    relay.hub.stop()
    relay.pulse.stop()
