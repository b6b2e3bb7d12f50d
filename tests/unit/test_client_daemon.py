"""The client daemon's pieces that need no root: configuration, the hook helper, status."""

from __future__ import annotations

import asyncio
import logging
import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from teredo.core.config import parse_client_config
from teredo.core.errors import NameResolutionError, UsageError, UserError
from teredo.core.qualification import ServerPair
from teredo.programs.client_daemon import (
    ClientDaemon,
    HookRunner,
    client_settings,
    load_client_config,
    resolve_servers,
)
from teredo.programs.loading import Loaded


def test_servers_with_secondary_default_and_fallbacks() -> None:
    config = parse_client_config(
        "ServerAddress 198.51.100.2\nFallbackServers 198.51.100.66,198.51.100.70\n"
    )
    servers = resolve_servers(config)
    assert servers == (
        ServerPair(IPv4Address("198.51.100.2"), IPv4Address("198.51.100.3")),
        ServerPair(IPv4Address("198.51.100.66"), IPv4Address("198.51.100.67")),
        ServerPair(IPv4Address("198.51.100.70"), IPv4Address("198.51.100.71")),
    )
    config = parse_client_config("ServerAddress 198.51.100.2\nServerAddress2 198.51.100.9\n")
    assert resolve_servers(config)[0].secondary == IPv4Address("198.51.100.9")


def test_unresolvable_server_is_one_sentence() -> None:
    config = parse_client_config("ServerAddress no-such-host.invalid\n")
    with pytest.raises(NameResolutionError, match="cannot resolve"):
        resolve_servers(config)


def test_settings_from_config() -> None:
    config = parse_client_config(
        "ServerAddress 198.51.100.2\nRefreshInterval 20\nMaxPeers 50\nLocalDiscovery yes\n"
    )
    settings = client_settings(config, resolve_servers(config))
    assert settings.refresh_interval == 20.0 and settings.local_discovery
    assert settings.tunnel.max_peers == 50 and settings.tunnel.idle_timeout == 600.0


def test_load_config_file_and_command_line_server(tmp_path: Path) -> None:
    path = tmp_path / "miredo.conf"
    path.write_text("ServerAddress 198.51.100.2\nInterfaceName tun9\n")
    loaded = load_client_config(str(path), None)
    assert loaded.config.interface_name == "tun9" and loaded.path == str(path)
    loaded = load_client_config(str(path), "198.51.100.50")
    assert loaded.config.server_address == IPv4Address("198.51.100.50")
    with pytest.raises(UsageError):
        load_client_config(str(tmp_path / "missing.conf"), None)


def test_hook_helper_passes_only_valid_miredo_variables(tmp_path: Path) -> None:
    out = tmp_path / "env"
    script = tmp_path / "hook"
    script.write_text(f"#!/bin/sh\nenv | sort > {out}\nexit 3\n")
    script.chmod(0o755)

    async def run() -> None:
        runner = HookRunner(str(script))
        await runner.start()
        try:
            await runner.run(
                {
                    "STATE": "up",
                    "IFACE": "teredo",
                    "ADDRESS": "2001:0:c633:6402::1",
                    "MTU": "1280",
                    "LD_PRELOAD": "/tmp/evil.so",  # not a hook variable: dropped
                    "OLD_ADDRESS": "$(reboot)",  # not an address: dropped
                }
            )
        finally:
            await runner.close()

    asyncio.run(run())
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["STATE"] == "up" and env["IFACE"] == "teredo" and env["MTU"] == "1280"
    assert env["ADDRESS"] == "2001:0:c633:6402::1"
    assert "LD_PRELOAD" not in env and "OLD_ADDRESS" not in env
    assert env["PATH"].startswith("/usr/local/sbin")


def test_hook_output_does_not_confuse_the_helper(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that prints (Miredo's client-hook runs `ip`, which may) must not be taken for the
    helper's reply: its exit status is still the one reported, run after run."""
    script = tmp_path / "hook"
    script.write_text("#!/bin/sh\necho hello\necho '{\"code\": 0}'\nexit 3\n")
    script.chmod(0o755)

    async def run() -> None:
        runner = HookRunner(str(script))
        await runner.start()
        try:
            for state in ("up", "down"):
                await runner.run({"STATE": state, "IFACE": "teredo"})
        finally:
            await runner.close()

    with caplog.at_level(logging.INFO, logger="teredo.programs.client_daemon"):
        asyncio.run(run())
    statuses = [r.getMessage() for r in caplog.records if "exited with status" in r.getMessage()]
    assert len(statuses) == 2 and all(m.endswith("status 3") for m in statuses), caplog.text


def test_hook_script_must_be_executable(tmp_path: Path) -> None:
    script = tmp_path / "hook"
    script.write_text("#!/bin/sh\n")

    async def run() -> None:
        await HookRunner(str(script)).start()

    with pytest.raises(UserError, match="not an executable"):
        asyncio.run(run())


def test_status_document_without_a_loop() -> None:
    from teredo.core.client import TeredoClient

    config = parse_client_config("ServerAddress 198.51.100.2\n")
    servers = resolve_servers(config)

    async def build() -> ClientDaemon:
        core = TeredoClient(
            client_settings(config, servers), random_bytes=os.urandom, secret=b"s" * 32, now=0.0
        )
        return ClientDaemon(loaded=Loaded(config, None, None, None), core=core, servers=servers)

    daemon = asyncio.run(build())
    document = daemon.status()
    assert document["role"] == "client" and document["state"] == "idle"
    assert document["address"] is None
    assert document["servers"] == [
        {"address": "198.51.100.2", "secondary": "198.51.100.3", "port": 3544, "in_use": True}
    ]
    assert document["config"] == "<command line>" and document["peer_list"] == []


def test_human_status_says_each_thing_once() -> None:
    """`teredo status` for a client: the server in use is marked on the servers line, the
    mapping is read from the decoded address, trusted peers and the bound are on the peers line;
    nothing is repeated under another label (the JSON keeps every key)."""
    from teredo.core.client import TeredoClient
    from teredo.programs.status import render_status

    config = parse_client_config(
        "ServerAddress 198.51.100.2\nFallbackServers 192.0.2.1\nAllowPrivateAddresses yes\n"
    )
    servers = resolve_servers(config)

    async def build() -> ClientDaemon:
        core = TeredoClient(
            client_settings(config, servers), random_bytes=os.urandom, secret=b"s" * 32, now=0.0
        )
        return ClientDaemon(loaded=Loaded(config, None, None, None), core=core, servers=servers)

    document = asyncio.run(build()).status()
    document.update(
        state="qualified",
        address="2001:0:c633:6402:39:69b8:34ff:8efd",
        mapped="203.0.113.2:38471",
    )
    text = render_status(document)
    labels = [line.split()[0] for line in text.splitlines()[1:] if line[:1].strip()]
    assert len(labels) == len(set(labels)), text
    for repeated in ("server", "secondary_server", "mapped", "trusted_peers", "max_peers"):
        assert repeated not in labels, text
    assert (
        "servers           198.51.100.2 (secondary 198.51.100.3, in use), "
        "192.0.2.1 (secondary 192.0.2.2)"
    ) in text
    assert "server 198.51.100.2, mapped 203.0.113.2:38471" in text
    assert "peers             0 (0 trusted), at most 1024" in text
    assert {"server", "secondary_server", "mapped", "trusted_peers"} <= set(document)
