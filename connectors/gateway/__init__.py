"""The alert gateway: real-time derived alerts for subscribers (SSE, WebSocket, webhooks) and the live wall.

``Gateway(settings)`` builds the service (``.app`` is the ASGI app); ``serve``
runs it under uvicorn. See ``app.py`` for the routes, ``access.py`` for tokens
and scopes, ``hub.py`` for the live fan-out and resumption, ``webhooks.py``
for signed, retried delivery.
"""
from connectors.gateway.app import Gateway, serve

__all__ = ["Gateway", "serve"]
