"""A UDP port mapping on the NAT's UPnP Internet Gateway Device (RFC 6081 §5.3.3, §5.3.5).

The client maps its own port (external port = local port, UDP, to its local address,
description ``TEREDO``, no lease limit) before it needs it, and deletes the mapping when it
stops. The calls are UPnP WANIPConnection's AddPortMapping, GetExternalIPAddress and
DeletePortMapping, made by `miniupnpc` (the MiniUPnP project's client library, imported here
only, and only when ``UPnP yes`` runs: the daemon pays nothing for it otherwise). `load` imports
it, before the daemon drops its privileges (afterwards the interpreter's own files may be out of
reach). Its calls block (SSDP discovery: see `DISCOVERY_DELAY_MS`), so the daemon runs `add` in
a thread of its own.

What the mapping means for Teredo is the core's business (`TeredoClient.set_upnp_mapping`);
this module only does the I/O and reports failures as one log line: RFC 6081 §5.3.3 says to
go on without the extension then.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from teredo.core.address import Endpoint

log = logging.getLogger(__name__)

# How long SSDP discovery listens for gateways, per search. miniupnpc's discovery as a whole
# took ~1.1 s with a gateway on the LAN and ~4 s without one in the lab, at 250 or 1000 ms alike:
# the daemon bounds what start-up waits for it (client_daemon.UPNP_START_WAIT).
DISCOVERY_DELAY_MS: Final = 250
DESCRIPTION: Final = "TEREDO"  # RFC 6081 §5.3.3: NewPortMappingDescription


class UpnpPortMapping:
    """One UDP port mapping on the gateway: `add` it, `remove` it. Blocking calls."""

    def __init__(self, library: Any) -> None:
        self._library = library  # the miniupnpc module
        self._client: Any = None
        self.port: int | None = None  # the external port we mapped, while we hold it

    @classmethod
    def load(cls) -> UpnpPortMapping | None:
        """Import miniupnpc; None (and one log line) when it is not installed."""
        try:
            import miniupnpc  # only when the extension runs
        except ImportError:
            log.info(
                "UPnP: the miniupnpc module is not installed; the UPnP extension is off "
                "(pip install miniupnpc, or set UPnP no)"
            )
            return None
        return cls(miniupnpc)

    def add(self, local: Endpoint) -> Endpoint | None:
        """Map `local`'s port on the gateway to `local` (RFC 6081 §5.3.3); the gateway's
        external address and port, or None when there is no gateway or it refused."""
        client = self._library.UPnP()
        client.discoverdelay = DISCOVERY_DELAY_MS
        host, port = local
        try:
            found = client.discover()
            if found:
                client.selectigd()
        except Exception:  # miniupnpc raises a bare Exception, often with errno 0's "Success"
            found = 0
        if not found:
            log.info("UPnP: no Internet gateway answered; going on without UPnP")
            return None
        try:
            # RFC 6081 §5.3.3: NewRemoteHost "", NewExternalPort and NewInternalPort the local
            # port, UDP, NewInternalClient the local address, enabled, "TEREDO", lease 0.
            if not client.addportmapping(port, "UDP", host, port, DESCRIPTION, ""):
                log.info("UPnP: the gateway refused to map UDP port %d; going on without", port)
                return None
        except Exception as error:  # miniupnpc raises a bare Exception for every failure
            log.info("UPnP: cannot map UDP port %d (%s); going on without UPnP", port, error)
            return None
        self._client, self.port = client, port
        try:
            external = str(client.externalipaddress())
        except Exception as error:
            log.info("UPnP: the gateway does not say its address (%s); unmapping", error)
            self.remove()
            return None
        log.info("UPnP: UDP %s:%d is mapped at %s:%d", host, port, external, port)
        return (external, port)

    def remove(self) -> None:
        """Delete our mapping, if we hold one (RFC 6081 §5.3.5.1)."""
        client, port = self._client, self.port
        self._client = self.port = None
        if client is None or port is None:
            return
        try:
            client.deleteportmapping(port, "UDP", "")
            log.info("UPnP: UDP port %d unmapped", port)
        except Exception as error:
            log.warning("UPnP: cannot remove the mapping of UDP port %d (%s)", port, error)
