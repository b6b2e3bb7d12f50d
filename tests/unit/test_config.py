"""Miredo-compatible configuration parsing (teredo.core.config) and `teredo checkconf`.

The Miredo behaviour mirrored here was observed with Miredo 1.2.6's miredo-checkconf and daemons;
`test_agrees_with_miredo_checkconf` re-checks it against the real tool when it is installed.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import teredo.core.config
import teredo.core.record
from teredo.cli import main
from teredo.core.config import (
    ClientConfig,
    ConfigLine,
    MetricsAddress,
    RelayConfig,
    RelayType,
    ServerConfig,
    detect_role,
    parse_client_config,
    parse_config,
    parse_relay_config,
    parse_server_config,
    tokenize_config,
)
from teredo.core.errors import UsageError
from teredo.programs.loading import load_config
from testsupport import IN_CI, imported_after

SRC = "/etc/miredo/test.conf"

# Written for these tests in the shape of the files Debian's miredo packages ship (tabs, comments,
# commented-out alternatives), not copied from them.
DEBIAN_STYLE_CLIENT = """\
# Read miredo.conf(5) for the details.
InterfaceName\tteredo

# The Teredo server to use:
#ServerAddress\tteredo.example.net
ServerAddress\tteredo.example.org

# A fixed UDP port for picky firewalls:
#BindPort\t3545
"""

SAMPLE_STYLE_CLIENT = """\
#! /usr/sbin/miredo -f -c
#
# A sample configuration

# Client mode is the default.
#RelayType client

InterfaceName\tteredo

#BindPort\t3545
#BindAddress\t192.0.2.100
#SyslogFacility\tuser

## CLIENT OPTIONS
#ServerAddress teredo.example.com
ServerAddress teredo.example.org
#ServerAddress2 teredo2.example.org

## RELAY OPTIONS
#Prefix 2001:0::
#InterfaceMTU 1280
"""

DEBIAN_STYLE_SERVER = """\
# Read miredo-server.conf(5) for the details.

# The primary IPv4 address; UDP port 3544 opens on it and on the next one.
ServerBindAddress 192.0.2.221
"""

# The relay and server files of Consulintel's public Teredo how-to (a Miredo-era operator guide),
# with documentation addresses in place of its DIR_IPv4_PUBLIC placeholders.
GUIDE_RELAY = """\
RelayType relay
InterfaceName teredo
BindAddress 198.51.100.18
BindPort 3545
Prefix 2001:0::
InterfaceMTU 1280
"""

GUIDE_SERVER = """\
Prefix 2001:0::
InterfaceMTU 1280
ServerBindAddress 198.51.100.2
ServerBindAddress2 198.51.100.3
"""


def error_of(text: str, role: str | None = None, **overrides: str) -> str:
    with pytest.raises(UsageError) as caught:
        parse_config(text, role, SRC, **overrides)  # type: ignore[arg-type]
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert len(message.splitlines()) == 1, message
    return message


# --- files that must work unchanged ------------------------------------------------------------


def test_debian_style_client() -> None:
    config = parse_config(DEBIAN_STYLE_CLIENT, source=SRC)
    assert config == ClientConfig(
        server_address="teredo.example.org", interface_name="teredo", source=SRC
    )
    assert config.server_address2 is None  # the client daemon adds 1 to the resolved address


def test_sample_style_client() -> None:
    config = parse_client_config(SAMPLE_STYLE_CLIENT, SRC)
    assert config.server_address == "teredo.example.org"
    assert config.warnings == ()


def test_debian_style_server() -> None:
    config = parse_config(DEBIAN_STYLE_SERVER, source=SRC)
    assert isinstance(config, ServerConfig)
    assert config.server_bind_address == IPv4Address("192.0.2.221")
    assert config.server_bind_address2 == IPv4Address("192.0.2.222")
    assert config.warnings == ()


def test_operator_guide_relay() -> None:
    config = parse_relay_config(GUIDE_RELAY, SRC)
    assert config == RelayConfig(
        relay_type=RelayType.CONE,
        prefix=IPv6Network("2001::/32"),
        interface_mtu=1280,
        interface_name="teredo",
        bind_address=IPv4Address("198.51.100.18"),
        bind_port=3545,
        source=SRC,
    )
    assert not config.host_specific


def test_operator_guide_server() -> None:
    config = parse_server_config(GUIDE_SERVER, SRC)
    assert config == ServerConfig(
        server_bind_address=IPv4Address("198.51.100.2"),
        server_bind_address2=IPv4Address("198.51.100.3"),
        source=SRC,
    )


def test_installed_miredo_examples_parse() -> None:
    """Whatever example files the installed Miredo ships must load (skipped where absent)."""
    paths = [
        Path("/etc/miredo/miredo.conf"),
        Path("/etc/miredo/miredo-server.conf"),
        Path("/usr/share/doc/miredo/examples/miredo.conf"),
    ]
    present = [path for path in paths if path.is_file()]
    if not present:
        pytest.skip("Miredo's example files are not installed")
    for path in present:
        config = load_config(str(path))
        assert not [w for w in config.warnings if w.ignored], config.warnings


# --- defaults -----------------------------------------------------------------------------------


def test_client_defaults() -> None:
    config = parse_client_config("ServerAddress 198.51.100.2\n", SRC)
    assert config.server_address == IPv4Address("198.51.100.2")
    assert config.server_address2 == IPv4Address("198.51.100.3")  # miredo.conf(5): primary + 1
    assert config.interface_name == "teredo"
    assert config.bind_address == IPv4Address("0.0.0.0")
    assert config.bind_port == 0
    assert config.syslog_facility == "daemon"
    assert config.control_socket == "/run/teredo/client-teredo.sock"  # per instance
    assert config.user == "nobody"
    assert config.hook_script is None
    assert config.max_peers == 1024
    assert config.max_queue_bytes == 1280
    assert config.refresh_interval == 30  # RFC 6081 §5.1.1
    assert config.allow_private_addresses is False
    assert config.warnings == ()


def test_relay_defaults() -> None:
    config = parse_relay_config("RelayType cone\n", SRC)
    assert config.relay_type is RelayType.CONE
    assert config.prefix == IPv6Network("2001::/32")
    assert config.interface_mtu == 1280
    assert config.interface_name == "teredo"
    assert (config.bind_address, config.bind_port) == (IPv4Address("0.0.0.0"), 0)
    assert config.control_socket == "/run/teredo/relay-teredo.sock"
    assert config.max_peers == 1 << 20
    assert config.max_queue_bytes == 1280


def test_host_specific_relay_defaults() -> None:
    config = parse_relay_config("RelayType host-specific\n", SRC)
    assert config.host_specific and config.max_peers == 1024
    assert parse_relay_config("RelayType HostRelay\n", SRC).relay_type is RelayType.HOST_SPECIFIC


def test_server_defaults() -> None:
    config = parse_server_config("ServerBindAddress 198.51.100.2\n", SRC)
    assert config.server_bind_address2 == IPv4Address("198.51.100.3")
    assert config.prefix == IPv6Network("2001::/32")
    assert config.interface_mtu == 1280
    assert config.control_socket == "/run/teredo/server.sock"
    assert config.user == "nobody"
    assert config.rate_limit == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("RateLimit -1\n", "RateLimit must be a decimal number between 0 and 1000000, not '-1'"),
        ("RateLimit 1000001\n", "RateLimit must be between 0 and 1000000, not 1000001"),
        ("RateLimit fast\n", "RateLimit must be a decimal number between 0 and 1000000"),
    ],
)
def test_rate_limit_errors(text: str, expected: str) -> None:
    message = error_of("ServerBindAddress 198.51.100.2\n" + text)
    assert message.startswith(f"{SRC}:2: {expected}")


def test_rate_limit_is_for_servers_only() -> None:
    config = parse_client_config("ServerAddress 198.51.100.2\nRateLimit 10\n", SRC)
    [warning] = config.warnings
    assert warning.ignored and "RateLimit does not apply to a client" in warning.message


def test_dataclasses_are_frozen_and_slotted() -> None:
    config = parse_client_config("ServerAddress 198.51.100.2\n", SRC)
    for cls in (
        ClientConfig,
        RelayConfig,
        ServerConfig,
        ConfigLine,
        teredo.core.config.ConfigWarning,
    ):
        assert "__slots__" in vars(cls)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bind_port = 1  # type: ignore[misc]


# --- every directive ----------------------------------------------------------------------------

CLIENT_BASE = "ServerAddress 198.51.100.2\n"
RELAY_BASE = "RelayType relay\n"
SERVER_BASE = "ServerBindAddress 198.51.100.2\n"


@pytest.mark.parametrize(
    ("base", "line", "field", "expected"),
    [
        (
            CLIENT_BASE,
            "ServerAddress2 198.51.100.9",
            "server_address2",
            IPv4Address("198.51.100.9"),
        ),
        (
            CLIENT_BASE,
            "ServerAddress2 teredo2.example.org",
            "server_address2",
            "teredo2.example.org",
        ),
        (CLIENT_BASE, "InterfaceName tun-teredo", "interface_name", "tun-teredo"),
        (CLIENT_BASE, "BindAddress 10.1.0.2", "bind_address", IPv4Address("10.1.0.2")),
        (CLIENT_BASE, "BindPort 3545", "bind_port", 3545),
        (CLIENT_BASE, "BindPort 0", "bind_port", 0),
        (CLIENT_BASE, "BindPort 65535", "bind_port", 65535),
        (CLIENT_BASE, "SyslogFacility local3", "syslog_facility", "local3"),
        (CLIENT_BASE, "SyslogFacility USER", "syslog_facility", "user"),
        (CLIENT_BASE, "RelayType client", "server_address", IPv4Address("198.51.100.2")),
        (CLIENT_BASE, "RelayType autoclient", "server_address", IPv4Address("198.51.100.2")),
        (CLIENT_BASE, "ControlSocket /run/t/c1.sock", "control_socket", "/run/t/c1.sock"),
        (CLIENT_BASE, "ControlSocket none", "control_socket", None),
        (CLIENT_BASE, "User teredo", "user", "teredo"),
        (
            CLIENT_BASE,
            "HookScript /etc/miredo/client-hook",
            "hook_script",
            "/etc/miredo/client-hook",
        ),
        (CLIENT_BASE, "MaxPeers 10", "max_peers", 10),
        (CLIENT_BASE, "MaxQueueBytes 4096", "max_queue_bytes", 4096),
        (CLIENT_BASE, "RefreshInterval 15", "refresh_interval", 15),
        (CLIENT_BASE, "AllowPrivateAddresses yes", "allow_private_addresses", True),
        (CLIENT_BASE, "AllowPrivateAddresses Off", "allow_private_addresses", False),
        (RELAY_BASE, "Prefix 3ffe:831f::", "prefix", IPv6Network("3ffe:831f::/32")),
        (RELAY_BASE, "Prefix 2001:db8::/32", "prefix", IPv6Network("2001:db8::/32")),
        (RELAY_BASE, "InterfaceMTU 1400", "interface_mtu", 1400),
        (RELAY_BASE, "InterfaceMTU 1400", "max_queue_bytes", 1400),  # one full packet fits
        (RELAY_BASE, "InterfaceName teredo0", "interface_name", "teredo0"),
        (RELAY_BASE, "BindAddress 198.51.100.18", "bind_address", IPv4Address("198.51.100.18")),
        (RELAY_BASE, "BindPort 3545", "bind_port", 3545),
        (RELAY_BASE, "SyslogFacility kern", "syslog_facility", "kern"),
        (RELAY_BASE, "ControlSocket /tmp/relay.sock", "control_socket", "/tmp/relay.sock"),
        (RELAY_BASE, "User teredo", "user", "teredo"),
        (RELAY_BASE, "MaxPeers 1000000", "max_peers", 1000000),
        (RELAY_BASE, "MaxQueueBytes 2560", "max_queue_bytes", 2560),
        (RELAY_BASE, "AllowPrivateAddresses true", "allow_private_addresses", True),
        (
            SERVER_BASE,
            "ServerBindAddress2 198.51.100.3",
            "server_bind_address2",
            IPv4Address("198.51.100.3"),
        ),
        (SERVER_BASE, "Prefix 2001:0::", "prefix", IPv6Network("2001::/32")),
        (SERVER_BASE, "InterfaceMTU 1280", "interface_mtu", 1280),
        (SERVER_BASE, "SyslogFacility local7", "syslog_facility", "local7"),
        (SERVER_BASE, "ControlSocket /run/s.sock", "control_socket", "/run/s.sock"),
        (SERVER_BASE, "User daemon", "user", "daemon"),
        (SERVER_BASE, "AllowPrivateAddresses 1", "allow_private_addresses", True),
        (SERVER_BASE, "RateLimit 50", "rate_limit", 50),
        (SERVER_BASE, "RateLimit 0", "rate_limit", 0),
        (SERVER_BASE, "ratelimit 1000000", "rate_limit", 1000000),
    ],
)
def test_directive(base: str, line: str, field: str, expected: object) -> None:
    config = parse_config(base + line + "\n", source=SRC)
    assert getattr(config, field) == expected
    assert not [w for w in config.warnings if w.ignored]


@pytest.mark.parametrize(
    ("value", "relay_type"),
    [
        ("relay", RelayType.CONE),
        ("cone", RelayType.CONE),
        ("CONE", RelayType.CONE),
        ("restricted", RelayType.RESTRICTED),
        ("host-specific", RelayType.HOST_SPECIFIC),
        ("hostrelay", RelayType.HOST_SPECIFIC),
    ],
)
def test_relay_types(value: str, relay_type: RelayType) -> None:
    config = parse_config(f"RelayType {value}\n", source=SRC)
    assert isinstance(config, RelayConfig) and config.relay_type is relay_type


def test_restricted_is_advised_against() -> None:
    config = parse_relay_config("RelayType restricted\n", SRC)
    assert [(w.line, w.ignored) for w in config.warnings] == [(1, False)]
    assert "unreliable" in config.warnings[0].message


def test_every_syslog_facility_miredo_knows() -> None:
    for facility in ["auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news"]:
        assert parse_client_config(CLIENT_BASE + f"SyslogFacility {facility}", SRC)
    for facility in ["syslog", "user", "uucp", *(f"local{n}" for n in range(8))]:
        assert parse_client_config(CLIENT_BASE + f"SyslogFacility {facility}", SRC)


# --- syntax -------------------------------------------------------------------------------------


def test_names_are_case_insensitive() -> None:
    text = "relaytype RELAY\nINTERFACENAME tere\nbindport 3545\nPREFIX 2001::\ninterfacemtu 1280\n"
    config = parse_relay_config(text, SRC)
    assert (config.interface_name, config.bind_port) == ("tere", 3545)
    assert config.warnings == ()


def test_comments_blank_lines_and_whitespace() -> None:
    text = (
        "\n"
        "# a comment\n"
        "   # an indented comment\n"
        "\t\n"
        "  ServerAddress \t 198.51.100.2   # the primary server\n"
        "\tBindPort\t3545\t\n"
        "#BindPort 1\n"
    )
    config = parse_client_config(text, SRC)
    assert (config.server_address, config.bind_port) == (IPv4Address("198.51.100.2"), 3545)
    assert config.warnings == ()


def test_crlf_bom_and_no_final_newline() -> None:
    config = parse_client_config("\ufeffServerAddress 198.51.100.2\r\nBindPort 3545", SRC)
    assert config.bind_port == 3545 and config.warnings == ()


def test_tokenizer_keeps_line_numbers() -> None:
    lines = tokenize_config("# c\n\nA b\n  C\nD e f # g\nH#i j\n")
    assert lines == [
        ConfigLine(3, "A", "b"),
        ConfigLine(4, "C", None),
        ConfigLine(5, "D", "e", "f"),
        ConfigLine(6, "H#i", "j"),
    ]
    assert lines[0].key == "a"


def test_text_after_the_value_is_ignored_with_advice() -> None:
    config = parse_client_config("ServerAddress 198.51.100.2 junk\n", SRC)
    assert config.server_address == IPv4Address("198.51.100.2")
    (warning,) = config.warnings
    assert not warning.ignored and str(warning) == (
        f"{SRC}:1: the text after the value of ServerAddress is ignored: 'junk'"
    )


# --- ignored lines: warnings, like Miredo's daemon ----------------------------------------------


def test_duplicate_directive_first_wins() -> None:
    config = parse_client_config("ServerAddress 198.51.100.2\nserveraddress 203.0.113.5\n", SRC)
    assert config.server_address == IPv4Address("198.51.100.2")
    (warning,) = config.warnings
    assert (warning.line, warning.ignored) == (2, True)
    assert "already set at line 1" in warning.message


def test_duplicate_is_not_validated() -> None:
    """Miredo never reads the second value, so a bad one there is only an ignored line."""
    config = parse_relay_config("RelayType relay\nInterfaceMTU 1280\nInterfaceMTU 900\n", SRC)
    assert config.interface_mtu == 1280 and config.warnings[0].ignored


def test_unknown_directive_is_a_warning_with_a_suggestion() -> None:
    config = parse_client_config(CLIENT_BASE + "IntefaceName x\nFoo bar\nA=b\n", SRC)
    messages = [str(w) for w in config.warnings]
    assert messages == [
        f"{SRC}:2: unknown directive IntefaceName (did you mean InterfaceName?), "
        "so the line is ignored",
        f"{SRC}:3: unknown directive Foo, so the line is ignored",
        f"{SRC}:4: unknown directive A=b (write 'Name value', without '='), so the line is ignored",
    ]
    assert all(w.ignored for w in config.warnings)


@pytest.mark.parametrize(
    ("text", "parse", "message"),
    [
        (  # once "there is no ServerAddress", without the hint its warning has
            "ServerAdress 198.51.100.2\n",
            parse_client_config,
            "1: unknown directive ServerAdress (did you mean ServerAddress?), so there is no "
            "ServerAddress; add 'ServerAddress' with the Teredo server's hostname or IPv4 "
            "address, or give the server on the command line",
        ),
        (
            "# a server\nServerBindAdress 198.51.100.2\n",
            parse_server_config,
            "2: unknown directive ServerBindAdress (did you mean ServerBindAddress?), so there "
            "is no ServerBindAddress; add 'ServerBindAddress' with the first of the server's "
            "two consecutive public IPv4 addresses",
        ),
        (  # checkconf reads this as a client file: the typo is still the line to fix
            "ServerBindAdress 198.51.100.2\n",
            lambda text, source: parse_config(text, None, source),
            "1: unknown directive ServerBindAdress (did you mean ServerBindAddress?), and there "
            "is no ServerAddress; add 'ServerAddress' with the Teredo server's hostname or IPv4 "
            "address, or give the server on the command line",
        ),
    ],
)
def test_a_misspelt_required_directive_gets_the_suggestion_too(
    text: str, parse: Callable[[str, str], object], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        parse(text, SRC)
    assert str(caught.value) == f"{SRC}:{message}"


def test_a_missing_directive_without_a_likely_typo_is_reported_as_before() -> None:
    with pytest.raises(UsageError) as caught:
        parse_client_config("Foo bar\nA=b\n", SRC)
    assert str(caught.value).startswith(f"{SRC}: there is no ServerAddress; add")


def test_directive_without_value_is_ignored() -> None:
    config = parse_client_config("InterfaceName\nServerAddress 198.51.100.2\n", SRC)
    assert config.interface_name == "teredo"
    assert config.warnings[0].line == 1 and config.warnings[0].ignored


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (CLIENT_BASE + "Prefix 2001::\n", 2),
        (CLIENT_BASE + "InterfaceMTU 1280\n", 2),
        (CLIENT_BASE + "ServerBindAddress2 198.51.100.3\n", 2),
        (RELAY_BASE + "ServerAddress 198.51.100.2\n", 2),
        (RELAY_BASE + "HookScript /bin/true\n", 2),
        (RELAY_BASE + "RefreshInterval 10\n", 2),
        ("RelayType relay\n" + SERVER_BASE, 1),
        (SERVER_BASE + "BindPort 3544\n", 2),
        (SERVER_BASE + "MaxPeers 5\n", 2),
        (SERVER_BASE + "ServerAddress bogus..name\n", 2),  # not validated: it does not apply
    ],
)
def test_directive_for_another_role_is_ignored(text: str, line: int) -> None:
    config = parse_config(text, source=SRC)
    assert [(w.line, w.ignored) for w in config.warnings] == [(line, True)]
    assert "does not apply" in config.warnings[0].message


def test_server_file_with_bad_relay_type_is_only_a_warning() -> None:
    config = parse_config(SERVER_BASE + "RelayType nonsense\n", source=SRC)
    assert isinstance(config, ServerConfig) and config.warnings[0].ignored


# --- roles --------------------------------------------------------------------------------------


def test_detect_role() -> None:
    assert detect_role("") == "client"
    assert detect_role("RelayType autoclient") == "client"
    assert detect_role("RelayType restricted") == "relay"
    assert detect_role("RelayType relay\nserverbindaddress 198.51.100.2") == "server"


@pytest.mark.parametrize(
    ("text", "role", "expected"),
    [
        (GUIDE_SERVER, "client", f"{SRC}:3: ServerBindAddress makes this a server configuration"),
        (GUIDE_SERVER, "relay", f"{SRC}:3: ServerBindAddress makes this a server configuration"),
        (GUIDE_RELAY, "client", f"{SRC}:1: RelayType relay makes this a relay configuration"),
        ("RelayType autoclient\n", "relay", f"{SRC}:1: RelayType autoclient makes this a client"),
        (GUIDE_RELAY, "server", f"{SRC}: there is no ServerBindAddress"),
    ],
)
def test_role_mismatch(text: str, role: str, expected: str) -> None:
    assert error_of(text, role).startswith(expected)


def test_relay_without_relay_type_is_a_cone_relay() -> None:
    """`teredo relay` on a file without RelayType: a relay (miredo's default would be a
    client; the subcommand picks the default, the file's RelayType wins when present)."""
    config = parse_relay_config("BindPort 3545\n")
    assert config.relay_type is RelayType.CONE


# --- errors: one sentence with file and line ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # RelayType
        (
            "RelayType disabled\n",
            f"{SRC}:1: RelayType must be client, autoclient, relay, cone, "
            "restricted or host-specific, not 'disabled'",
        ),
        # ServerAddress / ServerAddress2
        ("", f"{SRC}: there is no ServerAddress;"),
        ("ServerAddress ::1\n", f"{SRC}:1: ServerAddress must be an IPv4 address or a hostname"),
        ("ServerAddress 300.1.1.1\n", f"{SRC}:1: ServerAddress must be a dotted-quad IPv4"),
        ("ServerAddress 16909060\n", f"{SRC}:1: ServerAddress must be a dotted-quad IPv4"),
        ("ServerAddress 0x01020304\n", f"{SRC}:1: ServerAddress must be a dotted-quad IPv4"),
        ("ServerAddress -bad-.example\n", f"{SRC}:1: ServerAddress must be an IPv4 address or"),
        ("ServerAddress a..b\n", f"{SRC}:1: ServerAddress must be an IPv4 address or"),
        ("ServerAddress 10.0.0.1\n", f"{SRC}:1: ServerAddress 10.0.0.1 is not a global unicast"),
        ("ServerAddress 224.0.0.1\n", f"{SRC}:1: ServerAddress must be a unicast IPv4 address"),
        ("ServerAddress 0.0.0.0\n", f"{SRC}:1: ServerAddress must be a unicast IPv4 address"),
        (
            "ServerAddress 255.255.255.255\nAllowPrivateAddresses yes\n",
            f"{SRC}:1: ServerAddress must be a unicast IPv4 address",
        ),
        (
            "ServerAddress 9.255.255.255\n",
            f"{SRC}:1: the secondary address ServerAddress + 1 = 10.0.0.0 is not a global",
        ),
        (
            "ServerAddress 198.51.100.2\nServerAddress2 192.168.1.1\n",
            f"{SRC}:2: ServerAddress2 192.168.1.1 is not a global unicast",
        ),
        (
            "ServerAddress 198.51.100.2\nServerAddress2 198.51.100.2\n",
            f"{SRC}:2: ServerAddress2 must differ from ServerAddress",
        ),
        (
            "ServerAddress2 ::2\nServerAddress 198.51.100.2\n",
            f"{SRC}:1: ServerAddress2 must be an IPv4 address or a hostname",
        ),
        # numbers
        (
            "RelayType relay\nInterfaceMTU 900\n",
            f"{SRC}:2: InterfaceMTU must be between 1280 and 65507, not 900",
        ),
        (
            "RelayType relay\nInterfaceMTU 70000\n",
            f"{SRC}:2: InterfaceMTU must be between 1280 and 65507, not 70000",
        ),
        (
            "RelayType relay\nInterfaceMTU 0x600\n",
            f"{SRC}:2: InterfaceMTU must be a decimal number between 1280 and 65507, not '0x600'",
        ),
        (CLIENT_BASE + "BindPort 65536\n", f"{SRC}:2: BindPort must be between 0 and 65535"),
        (CLIENT_BASE + "BindPort -1\n", f"{SRC}:2: BindPort must be a decimal number"),
        (CLIENT_BASE + "BindPort 010\n", f"{SRC}:2: BindPort must be a decimal number"),
        (CLIENT_BASE + "BindPort 12ab\n", f"{SRC}:2: BindPort must be a decimal number"),
        (CLIENT_BASE + "BindPort \u0661\u0662\n", f"{SRC}:2: BindPort must be a decimal number"),
        (CLIENT_BASE + "MaxPeers 0\n", f"{SRC}:2: MaxPeers must be between 1 and 16777216"),
        (CLIENT_BASE + "MaxQueueBytes 100\n", f"{SRC}:2: MaxQueueBytes must be between 1280"),
        (
            "RelayType relay\nInterfaceMTU 1500\nMaxQueueBytes 1400\n",
            f"{SRC}:3: MaxQueueBytes must be at least the InterfaceMTU of 1500, not 1400",
        ),
        (CLIENT_BASE + "RefreshInterval 0\n", f"{SRC}:2: RefreshInterval must be between 1 and"),
        (CLIENT_BASE + "RefreshInterval 7200\n", f"{SRC}:2: RefreshInterval must be between 1"),
        # Prefix
        ("RelayType relay\nPrefix zzz\n", f"{SRC}:2: Prefix must be an IPv6 /32 prefix"),
        ("RelayType relay\nPrefix 1.2.3.4\n", f"{SRC}:2: Prefix must be an IPv6 /32 prefix"),
        ("RelayType relay\nPrefix 2001::/48\n", f"{SRC}:2: Prefix must be an IPv6 /32 prefix"),
        ("RelayType relay\nPrefix fe80::%eth0\n", f"{SRC}:2: Prefix must be an IPv6 /32 prefix"),
        ("RelayType relay\nPrefix 2001:0:1::\n", f"{SRC}:2: Prefix must have only its first 32"),
        ("RelayType relay\nPrefix ff02::\n", f"{SRC}:2: Prefix must be a global unicast prefix"),
        ("RelayType relay\nPrefix fe80::\n", f"{SRC}:2: Prefix must be a global unicast prefix"),
        ("RelayType relay\nPrefix ::\n", f"{SRC}:2: Prefix must be a global unicast prefix"),
        # names, paths, words
        (CLIENT_BASE + "InterfaceName abcdefghijklmnop\n", f"{SRC}:2: InterfaceName must be 1 to"),
        (CLIENT_BASE + "InterfaceName a/b\n", f"{SRC}:2: InterfaceName must be 1 to 15"),
        (CLIENT_BASE + "InterfaceName tun%d\n", f"{SRC}:2: InterfaceName must be 1 to 15"),
        (CLIENT_BASE + "InterfaceName ..\n", f"{SRC}:2: InterfaceName must be 1 to 15"),
        (CLIENT_BASE + "InterfaceName t\u00e9r\u00e9do\n", f"{SRC}:2: InterfaceName must be"),
        (CLIENT_BASE + "BindAddress ::1\n", f"{SRC}:2: BindAddress must be an IPv4 address"),
        (CLIENT_BASE + "BindAddress localhost\n", f"{SRC}:2: BindAddress must be an IPv4"),
        (CLIENT_BASE + "SyslogFacility local8\n", f"{SRC}:2: SyslogFacility must be daemon,"),
        (
            CLIENT_BASE + "AllowPrivateAddresses maybe\n",
            f"{SRC}:2: AllowPrivateAddresses must be yes or no, not 'maybe'",
        ),
        (
            CLIENT_BASE + "HookScript client-hook\n",
            f"{SRC}:2: HookScript must be an absolute path, not 'client-hook'",
        ),
        (CLIENT_BASE + "ControlSocket run/x.sock\n", f"{SRC}:2: ControlSocket must be an absolute"),
        (
            CLIENT_BASE + "ControlSocket /" + "x" * 107 + "\n",
            f"{SRC}:2: ControlSocket must be at most 107 bytes long",
        ),
        (CLIENT_BASE + "User -root\n", f"{SRC}:2: User must be a user name such as nobody"),
        (CLIENT_BASE + "User a:b\n", f"{SRC}:2: User must be a user name"),
        # servers
        ("ServerBindAddress foo.example\n", f"{SRC}:1: ServerBindAddress must be an IPv4 address"),
        (
            "ServerBindAddress 192.168.0.1\n",
            f"{SRC}:1: ServerBindAddress 192.168.0.1 is not a global unicast IPv4 address",
        ),
        (
            "ServerBindAddress 255.255.255.255\nAllowPrivateAddresses yes\n",
            f"{SRC}:1: ServerBindAddress must be a unicast IPv4 address",
        ),
        (
            "ServerBindAddress 223.255.255.255\n",
            f"{SRC}:1: the secondary address ServerBindAddress + 1 = 224.0.0.0 is not a global",
        ),
        (
            SERVER_BASE + "ServerBindAddress2 198.51.100.2\n",
            f"{SRC}:2: ServerBindAddress2 must differ from ServerBindAddress",
        ),
        (
            SERVER_BASE + "ServerBindAddress2 127.0.0.1\n",
            f"{SRC}:2: ServerBindAddress2 127.0.0.1 is not a global unicast",
        ),
        (SERVER_BASE + "InterfaceMTU 1279\n", f"{SRC}:2: InterfaceMTU must be between 1280"),
    ],
)
def test_errors_are_one_sentence_with_file_and_line(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_values_in_messages_are_escaped_and_short() -> None:
    message = error_of(CLIENT_BASE + "InterfaceName \x1b[31m\u2028" + "x" * 200 + "\n")
    assert "\x1b" not in message and "\u2028" not in message and len(message) < 250


def test_first_bad_line_in_file_order_is_reported() -> None:
    assert error_of("BindPort 99999\nServerAddress ::1\n").startswith(f"{SRC}:1:")


def test_message_names_the_line_counting_blank_lines() -> None:
    assert error_of("RelayType relay\n" + "\n" * 5 + "InterfaceMTU 900\n") == (
        f"{SRC}:7: InterfaceMTU must be between 1280 and 65507, not 900"
    )


# --- advice that is not an error ----------------------------------------------------------------


def test_advice_warnings() -> None:
    relay = parse_relay_config("RelayType relay\nPrefix 3ffe:831f::\nInterfaceMTU 1280\n", SRC)
    assert [(w.line, w.ignored) for w in relay.warnings] == [(2, False)]
    relay = parse_relay_config("RelayType relay\nInterfaceMTU 1400\n", SRC)
    assert [(w.line, w.ignored) for w in relay.warnings] == [(2, False)]
    assert "interoperability" in relay.warnings[0].message
    relay = parse_relay_config("RelayType relay\nPrefix 2001:db8::\nInterfaceMTU 1400\n", SRC)
    assert relay.warnings == ()  # a private prefix may use its own MTU
    server = parse_server_config(SERVER_BASE + "ServerBindAddress2 198.51.100.9\n", SRC)
    assert [(w.line, w.ignored) for w in server.warnings] == [(2, False)]


# --- lab relaxation and command-line overrides --------------------------------------------------


def test_allow_private_addresses() -> None:
    client = parse_client_config("ServerAddress 10.0.0.1\nAllowPrivateAddresses yes\n", SRC)
    assert client.server_address2 == IPv4Address("10.0.0.2") and client.allow_private_addresses
    server = parse_server_config("AllowPrivateAddresses on\nServerBindAddress 127.0.0.1\n", SRC)
    assert server.server_bind_address2 == IPv4Address("127.0.0.2")


def test_documentation_ranges_count_as_global() -> None:
    """RFC 4380 §5.2.4 (and Miredo) treat TEST-NET as global: the lab relies on that."""
    for address in ("192.0.2.1", "198.51.100.2", "203.0.113.5", "100.64.0.1"):
        assert parse_client_config(f"ServerAddress {address}\n", SRC)


def test_client_server_override() -> None:
    text = "ServerAddress 198.51.100.2\nServerAddress2 198.51.100.9\n"
    config = parse_client_config(text, SRC, server="203.0.113.7")
    assert config.server_address == IPv4Address("203.0.113.7")
    assert config.server_address2 == IPv4Address("203.0.113.8")
    assert [(w.line, w.ignored) for w in config.warnings] == [(2, False)]
    config = parse_client_config("", SRC, server="teredo.example.net")
    assert (config.server_address, config.server_address2) == ("teredo.example.net", None)
    message = error_of("", "client", server="::1")
    assert message.startswith("the server given on the command line must be an IPv4 address")
    message = error_of("", "client", server="10.0.0.1")
    assert message.startswith(f"{SRC}: the server given on the command line 10.0.0.1 is not")


def test_server_address_override() -> None:
    config = parse_server_config("ServerBindAddress2 198.51.100.9\n", SRC, address="203.0.113.4")
    assert config.server_bind_address == IPv4Address("203.0.113.4")
    assert config.server_bind_address2 == IPv4Address("203.0.113.5")
    assert not [w for w in config.warnings if w.ignored]
    assert error_of("", "server", address="x").startswith("the address given on the command line")


# --- files --------------------------------------------------------------------------------------


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^cannot read .*missing\.conf: No such file"):
        load_config(str(tmp_path / "missing.conf"))
    with pytest.raises(UsageError, match=r"^cannot read .*: Is a directory$"):
        load_config(str(tmp_path))
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"ServerAddress 198.51.100.2\n\0\0")
    with pytest.raises(UsageError, match="contains NUL bytes"):
        load_config(str(binary))
    huge = tmp_path / "huge.conf"
    huge.write_bytes(b"#" * (2 << 20))
    with pytest.raises(UsageError, match="larger than 1 MiB"):
        load_config(str(huge))


def test_load_config_tolerates_latin1_comments(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"# caf\xe9\nServerAddress 198.51.100.2\n")
    config = load_config(str(path))
    assert isinstance(config, ClientConfig) and config.source == str(path)


# --- fuzz ---------------------------------------------------------------------------------------

DIRECTIVE_NAMES = [
    "RelayType", "ServerAddress", "ServerAddress2", "Prefix", "InterfaceMTU", "InterfaceName",
    "BindAddress", "BindPort", "SyslogFacility", "ServerBindAddress", "ServerBindAddress2",
    "ControlSocket", "User", "HookScript", "MaxPeers", "MaxQueueBytes", "RefreshInterval",
    "AllowPrivateAddresses", "Bogus",
]  # fmt: skip
VALUES = [
    "relay", "cone", "client", "restricted", "host-specific", "198.51.100.2", "10.0.0.1",
    "255.255.255.255", "2001::", "3ffe:831f::", "1280", "900", "0", "65536", "teredo", "yes",
    "none", "/run/x.sock", "daemon", "local9", "example.org", "::1", "", "#", "a b",
]  # fmt: skip


def check_outcome(text: str, role: str | None) -> None:
    try:
        config = parse_config(text, role, SRC)  # type: ignore[arg-type]
    except UsageError as error:
        message = str(error)
        assert len(message.splitlines()) == 1 and message.isprintable(), message
        assert message.startswith((SRC + ":", "the ")), message
    else:
        assert isinstance(config, ClientConfig | RelayConfig | ServerConfig)
        for warning in config.warnings:
            assert str(warning).startswith(f"{SRC}:{warning.line}: ")
            assert len(str(warning).splitlines()) == 1 and str(warning).isprintable()


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from([None, "client", "relay", "server"]))
def test_fuzz_arbitrary_text(text: str, role: str | None) -> None:
    check_outcome(text, role)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(DIRECTIVE_NAMES).map(lambda n: n.swapcase() if len(n) % 2 else n),
            st.one_of(st.sampled_from(VALUES), st.text(max_size=12)),
            st.sampled_from([" ", "\t", "  ", " \t"]),
        ),
        max_size=8,
    ),
    st.sampled_from([None, "client", "relay", "server"]),
)
def test_fuzz_directive_lines(lines: list[tuple[str, str, str]], role: str | None) -> None:
    check_outcome("".join(f"{name}{blank}{value}\n" for name, value, blank in lines), role)


# --- `teredo checkconf` -------------------------------------------------------------------------


def checkconf(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["checkconf", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "test.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text", [GUIDE_RELAY, GUIDE_SERVER, DEBIAN_STYLE_CLIENT, SAMPLE_STYLE_CLIENT]
)
def test_checkconf_valid_is_silent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    # --no-resolve: teredo.example.org must not depend on this host's DNS (test_service.py
    # checks the resolving)
    assert checkconf(capsys, "--no-resolve", write(tmp_path, text)) == (0, "", "")


def test_checkconf_accepts_a_server_rate_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, GUIDE_SERVER + "RateLimit 20\n")
    assert checkconf(capsys, path) == (0, "", "")


@pytest.mark.parametrize("text", [GUIDE_RELAY, GUIDE_SERVER, DEBIAN_STYLE_CLIENT])
def test_checkconf_accepts_the_observability_directives(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    extra = "MetricsAddress [::1]:9344\nControlSocketGroup monitoring\nLogFormat json\n"
    # --no-resolve: the client file names teredo.example.org (see the test above)
    assert checkconf(capsys, "--no-resolve", write(tmp_path, text + extra)) == (0, "", "")
    code, _, err = checkconf(
        capsys, "--no-resolve", write(tmp_path, text + "MetricsAddress 9344\n")
    )
    assert code == 2 and "MetricsAddress must be an address and a port" in err


def test_checkconf_advice_prints_warning_and_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "RelayType restricted\n")
    code, out, err = checkconf(capsys, path)
    assert (code, out) == (0, "")
    assert err == (
        f"teredo: warning: {path}:1: RelayType restricted makes NAT traversal unreliable "
        "(miredo.conf(5) says not to use it); prefer RelayType relay on a public IPv4 address\n"
    )


def test_checkconf_fails_on_ignored_lines_like_miredo_checkconf(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "ServerAddress 198.51.100.2\nFoo bar\nServerAddress 203.0.113.1\n")
    code, out, err = checkconf(capsys, path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"teredo: warning: {path}:2: unknown directive Foo, so the line is ignored",
        f"teredo: warning: {path}:3: ServerAddress was already set at line 1, "
        "which is the one used",
        f"teredo: {path}: 2 lines are ignored (see the warnings above); fix or remove them",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("RelayType relay\nInterfaceMTU 900\n", "2: InterfaceMTU must be between 1280 and 65507"),
        ("ServerBindAddress 10.1.1.1\n", "1: ServerBindAddress 10.1.1.1 is not a global"),
        ("RelayType bogus\n", "1: RelayType must be client, autoclient"),
    ],
)
def test_checkconf_invalid_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    code, out, err = checkconf(capsys, path)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"teredo: {path}:{expected}")


def test_checkconf_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = checkconf(capsys, str(tmp_path / "nope.conf"))
    assert (code, out) == (2, "")
    assert err == f"teredo: cannot read {tmp_path / 'nope.conf'}: No such file or directory\n"


def test_checkconf_default_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "ServerAddress 198.51.100.2\n", "miredo.conf")
    monkeypatch.setattr(teredo.core.config, "DEFAULT_CONFIG_PATH", path)
    assert checkconf(capsys) == (0, "", "")


# --- agreement with the real miredo-checkconf ---------------------------------------------------

# Files on which Miredo 1.2.6 and we agree (hostnames avoided: miredo-checkconf resolves them).
AGREED = [
    ("ServerAddress 198.51.100.2\n", True),
    (
        "ServerAddress 198.51.100.2\nInterfaceName teredo\nBindPort 3545\nSyslogFacility user\n",
        True,
    ),
    ("serveraddress 198.51.100.2\n  # comment\n\n", True),
    ("ServerAddress 198.51.100.2 # trailing comment\n", True),
    (GUIDE_RELAY, True),
    ("RelayType cone\nPrefix 3ffe:831f::\n", True),
    ("RelayType restricted\n", True),
    ("RelayType CONE\nBindAddress 10.0.0.1\n", True),
    ("", False),
    ("RelayType client\n", False),
    ("ServerAddress 198.51.100.2\nFoo bar\n", False),
    ("ServerAddress 198.51.100.2\nServerAddress 198.51.100.9\n", False),
    ("ServerAddress 198.51.100.2\nPrefix 2001::\n", False),
    ("RelayType relay\nServerAddress 198.51.100.2\n", False),
    ("RelayType disabled\n", False),
    ("ServerAddress 198.51.100.2\nInterfaceName\n", False),
    ("ServerAddress 198.51.100.2\nBindPort 70000\n", False),
    ("ServerAddress 198.51.100.2\nBindPort 12ab\n", False),
    ("ServerAddress 198.51.100.2\nSyslogFacility local8\n", False),
    ("ServerAddress ::1\n", False),
    ("RelayType relay\nPrefix 2001::/32\n", True),  # we accept the /32 spelling; Miredo does not
    ("RelayType relay\nInterfaceMTU 900\n", False),  # Miredo accepts it, then cannot set up TUN
]


@pytest.mark.parametrize(("text", "valid"), AGREED)
def test_agrees_with_miredo_checkconf(tmp_path: Path, text: str, valid: bool) -> None:
    tool = shutil.which("miredo-checkconf") or (
        "/usr/sbin/miredo-checkconf" if Path("/usr/sbin/miredo-checkconf").exists() else None
    )
    if tool is None:
        if IN_CI:
            pytest.fail("in CI miredo-checkconf must be installed for this test")
        pytest.skip("miredo-checkconf is not installed")
    path = write(tmp_path, text)
    ours = True
    try:
        config = load_config(path)
        ours = not any(w.ignored for w in config.warnings)
    except UsageError:
        ours = False
    assert ours is valid
    miredo = subprocess.run([tool, path], capture_output=True, check=False).returncode == 0
    known_differences = {
        "RelayType relay\nPrefix 2001::/32\n",
        "RelayType relay\nInterfaceMTU 900\n",
    }
    if text in known_differences:
        assert miredo is not valid
    else:
        assert miredo is valid


# ---------------------------------------------------------------------------------------------
# Secure qualification (RFC 4380 §5.2.2)

SERVER_BASE = "ServerBindAddress 198.51.100.2\n"
CLIENT_BASE = "ServerAddress 198.51.100.2\n"


def test_client_key_inline_and_in_a_file() -> None:
    config = parse_client_config(CLIENT_BASE + "ClientIdentifier alice\nSharedSecret 00ff\n")
    assert (config.client_identifier, config.shared_secret) == (b"alice", b"\x00\xff")
    assert "00ff" not in repr(config) and "\\xff" not in repr(config)
    config = parse_client_config(
        CLIENT_BASE + "ClientIdentifier bob\nSharedSecretFile /etc/teredo/secret\n"
    )
    assert (config.client_identifier, config.shared_secret_file) == (b"bob", "/etc/teredo/secret")
    config = parse_client_config(CLIENT_BASE + "ClientIdentifier c\nSharedSecret base64:AAE=\n")
    assert config.shared_secret == b"\x00\x01"
    assert parse_client_config(CLIENT_BASE).client_identifier is None


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("ClientIdentifier alice\n", "ClientIdentifier needs the client's secret"),
        ("SharedSecret 00ff\n", "a shared secret needs the identifier"),
        ("SharedSecretFile /s\n", "a shared secret needs the identifier"),
        (
            "ClientIdentifier a\nSharedSecret 00\nSharedSecretFile /s\n",
            "set SharedSecret or SharedSecretFile, not both",
        ),
        ("ClientIdentifier a\nSharedSecret 0f0\n", "SharedSecret must be an even number of hex"),
        ("ClientIdentifier a\nSharedSecret base64:!!\n", "SharedSecret is not valid base64"),
        ("ClientIdentifier a\nSharedSecretFile secret\n", "must be an absolute path"),
    ],
)
def test_client_key_errors(lines: str, expected: str) -> None:
    with pytest.raises(UsageError, match=expected):
        parse_client_config(CLIENT_BASE + lines)


def test_server_key_file_and_requirement() -> None:
    config = parse_server_config(SERVER_BASE)
    assert (config.client_key_file, config.require_authentication) == (None, False)
    config = parse_server_config(
        SERVER_BASE + "ClientKeyFile /etc/teredo/clients\nRequireAuthentication yes\n"
    )
    assert (config.client_key_file, config.require_authentication) == ("/etc/teredo/clients", True)
    with pytest.raises(UsageError, match="RequireAuthentication yes needs the clients' keys"):
        parse_server_config(SERVER_BASE + "RequireAuthentication yes\n")


# --- watching a daemon: ControlSocketGroup, MetricsAddress, LogFormat -------------------------


def test_default_control_socket_is_per_interface() -> None:
    """Two clients on one host (two interfaces) get two sockets, not one they fight over."""
    first = parse_client_config("ServerAddress 198.51.100.2\nInterfaceName teredo1\n", SRC)
    second = parse_client_config("ServerAddress 198.51.100.2\nInterfaceName teredo2\n", SRC)
    assert first.control_socket == "/run/teredo/client-teredo1.sock"
    assert second.control_socket == "/run/teredo/client-teredo2.sock"
    relay = parse_relay_config("RelayType relay\nInterfaceName tr0\n", SRC)
    assert relay.control_socket == "/run/teredo/relay-tr0.sock"
    explicit = parse_client_config("ServerAddress 198.51.100.2\nControlSocket /run/x.sock\n", SRC)
    assert explicit.control_socket == "/run/x.sock"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9344", MetricsAddress(IPv4Address("127.0.0.1"), 9344)),
        ("[::1]:9344", MetricsAddress(IPv6Address("::1"), 9344)),
        ("0.0.0.0:80", MetricsAddress(IPv4Address("0.0.0.0"), 80)),
        ("none", None),
    ],
)
def test_metrics_address(value: str, expected: MetricsAddress | None) -> None:
    for text in (
        f"ServerAddress 198.51.100.2\nMetricsAddress {value}\n",
        f"RelayType relay\nMetricsAddress {value}\n",
        f"ServerBindAddress 198.51.100.2\nMetricsAddress {value}\n",
    ):
        config = parse_config(text, None, SRC)
        assert config.metrics_address == expected
        assert config.warnings == ()
    if expected is not None:
        assert str(expected) == value


@pytest.mark.parametrize(
    "value", ["127.0.0.1", "::1:9344", "[::1]", "127.0.0.1:0", "127.0.0.1:65536", "host:80",
              "224.0.0.1:9344", "[fe80::1%eth0]:9344", "127.0.0.1:09"],
)  # fmt: skip
def test_metrics_address_refused(value: str) -> None:
    with pytest.raises(UsageError, match=r"test\.conf:2: MetricsAddress must be an address and a"):
        parse_client_config(f"ServerAddress 198.51.100.2\nMetricsAddress {value}\n", SRC)


def test_metrics_off_by_default_and_text_logs() -> None:
    config = parse_client_config("ServerAddress 198.51.100.2\n", SRC)
    assert config.metrics_address is None
    assert config.log_format == "text"
    assert config.control_socket_group is None


def test_control_socket_group_and_log_format() -> None:
    config = parse_server_config(
        "ServerBindAddress 198.51.100.2\nControlSocketGroup monitoring\nLogFormat JSON\n", SRC
    )
    assert config.control_socket_group == "monitoring"
    assert config.log_format == "json"
    with pytest.raises(UsageError, match="LogFormat must be text or json, not 'xml'"):
        parse_server_config("ServerBindAddress 198.51.100.2\nLogFormat xml\n", SRC)
    with pytest.raises(UsageError, match="ControlSocketGroup must be a group name"):
        parse_server_config("ServerBindAddress 198.51.100.2\nControlSocketGroup a:b\n", SRC)


def test_rate_limit_default_is_the_servers() -> None:
    """config writes the server's default again, so that checkconf need not import the server."""
    from teredo.core.server import RATE_LIMIT_PER_SECOND

    assert teredo.core.config.DEFAULT_RATE_LIMIT == RATE_LIMIT_PER_SECOND


def test_reading_a_file_does_not_import_the_cores() -> None:
    """`teredo checkconf` stays a one-shot command: the configuration module alone, no core."""
    imported = {
        m for m in imported_after("import teredo.core.config") if m.startswith("teredo.core.")
    }
    assert imported == {
        f"teredo.core.{name}"
        for name in ("address", "config", "errors", "peers", "record", "typenames")
    }


def test_drain_time_is_a_relays_directive() -> None:
    assert parse_relay_config("RelayType relay\n", SRC).drain_time == 2
    assert parse_relay_config("RelayType relay\nDrainTime 0\n", SRC).drain_time == 0
    assert parse_relay_config("RelayType relay\nDrainTime 30\n", SRC).drain_time == 30
    with pytest.raises(UsageError, match="DrainTime"):
        parse_relay_config("RelayType relay\nDrainTime 601\n", SRC)
    client = parse_client_config("ServerAddress 192.0.2.1\nDrainTime 5\n", SRC)
    assert any("DrainTime" in w.message and w.ignored for w in client.warnings)


# --- the records: what dataclass(frozen=True, slots=True) gave ---------------------------------


def test_records_compare_and_hash_by_value() -> None:
    text = "ServerAddress 198.51.100.2\nSharedSecret 00112233\nClientIdentifier me\n"
    first, second = parse_client_config(text, SRC), parse_client_config(text, SRC)
    assert first == second and hash(first) == hash(second)
    assert first != parse_client_config(text + "BindPort 3545\n", SRC)
    assert ConfigLine(1, "a", "b") != ("a", "b")  # type: ignore[comparison-overlap]
    assert len({first, second}) == 1


def test_a_record_is_built_by_position_or_keyword_with_its_defaults() -> None:
    line = ConfigLine(3, "Name", value="value")
    assert (line.line, line.name, line.value, line.extra) == (3, "Name", "value", "")
    assert line.__match_args__ == ("line", "name", "value", "extra")
    with pytest.raises(TypeError, match="missing required argument: 'name'"):
        ConfigLine(3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        ConfigLine(3, "a", "b", "c", "d")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nme'"):
        ConfigLine(3, "a", None, nme="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values"):
        ConfigLine(3, "a", None, line=4)  # type: ignore[misc]


SECRET_FILE = "ServerAddress 198.51.100.2\nClientIdentifier me\nSharedSecret c0ffee\n"


def test_the_shared_secret_is_kept_out_of_the_repr() -> None:
    config = parse_client_config(SECRET_FILE, SRC)
    assert config.shared_secret == bytes.fromhex("c0ffee")
    assert "shared_secret=" not in repr(config) and r"\xc0\xff\xee" not in repr(config)
    assert "shared_secret_file=None" in repr(config)
    assert repr(ConfigLine(1, "a", None)) == "ConfigLine(line=1, name='a', value=None, extra='')"


def test_replace_gives_a_changed_copy() -> None:
    config = parse_client_config("ServerAddress 198.51.100.2\n", SRC)
    changed = teredo.core.record.replace(config, bind_port=3545, user="teredo")
    assert (changed.bind_port, changed.user, config.bind_port) == (3545, "teredo", 0)
    assert teredo.core.record.replace(changed, bind_port=0, user=config.user) == config
    with pytest.raises(TypeError):
        teredo.core.record.replace(config, no_such_field=1)


def test_records_survive_copy_and_pickle() -> None:
    import copy
    import pickle

    config = parse_client_config(SECRET_FILE, SRC)
    assert copy.copy(config) == config == pickle.loads(pickle.dumps(config))
    with pytest.raises(dataclasses.FrozenInstanceError):
        del config.user


def test_checkconf_imports_neither_dataclasses_nor_typing_for_the_configuration() -> None:
    """The configuration's own modules take typing's names for mypy only."""
    modules = imported_after("import teredo.core.config, teredo.programs.config_file")
    # teredo.core.peers's descriptor and protocol take their bases from teredo.core.typenames
    assert not modules & {"dataclasses", "inspect", "typing"}


# The character classes the lexer and the value parsers check without `re` (its import was
# milliseconds of every launch), held against the regular expressions they replace.
_CLASS_ALPHABET = st.text(alphabet=" \t\r\f\v\n\x1f\xa0\u2003#$-._0189afxAFXgz~!é٣", max_size=300)


@settings(max_examples=3000)
@given(_CLASS_ALPHABET)
def test_the_character_classes_match_the_regular_expressions_they_replace(text: str) -> None:
    import re

    from teredo.core import config
    from teredo.core.secure_qualification import is_hex, is_identifier

    assert config.split_words(text) == re.split(r"[ \t\r\f\v]+", text.strip(" \t\r\f\v"))
    assert config.made_of(text, config._DIGITS) == bool(re.fullmatch(r"[0-9]+", text))
    numeric = re.fullmatch(r"[0-9.]+|0[xX][0-9a-fA-F.xX]*", text)
    assert config.is_numeric_host(text) == bool(numeric)
    label = re.fullmatch(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", text)
    assert config.is_host_label(text) == bool(label)
    user = re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\$?", text)
    assert config.is_user_name(text) == bool(user)
    assert is_hex(text) == bool(re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", text))
    assert is_identifier(text) == bool(re.fullmatch(r"[!-~]{1,255}", text))
