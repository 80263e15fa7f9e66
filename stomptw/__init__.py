"""
stomptw: a STOMP 1.0, 1.1 and 1.2 message broker on Twisted.

Clients connect over plain TCP or over WebSocket (RFC 6455, served by
Autobahn) and exchange messages through queues (``/queue/NAME``) and
topics (``/topic/NAME``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
