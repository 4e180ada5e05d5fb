"""The wallboard: a kiosk web page that follows the gateway over MQTT.

``gateway.operator.wallboard.server`` subscribes to ``{root}/#``, keeps the retained state
it has seen (cards, stats, gateway status) plus the latest alerts, and pushes
them to browsers with Server-Sent Events; ``static/`` holds the page (plain
HTML/CSS/JS written for dialgate, no third-party code).

This package must never publish to the broker or show an unmasked callee number
that the gateway did not already publish.
"""

from gateway.operator.wallboard.server import WallboardServer, WallboardState, serve_wallboard

__all__ = ["WallboardServer", "WallboardState", "serve_wallboard"]
