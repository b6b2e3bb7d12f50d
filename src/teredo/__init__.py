"""teredo: Teredo (RFC 4380, RFC 5991, RFC 6081) client, server, relay and host-specific relay."""

__version__ = "0.1.0"
