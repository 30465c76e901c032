import pytest

from trustd.net.listen import InvalidListenAddress, parse_listen_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9879", ("127.0.0.1", 9879)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("metrics.node-1.example:9100", ("metrics.node-1.example", 9100)),
        ("[::1]:9879", ("::1", 9879)),
        ("[::]:9879", ("::", 9879)),
    ],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem", "not_host_port"),
    [
        ("9879", 'must be host:port, e.g. "127.0.0.1:9879"', True),
        (":9879", 'must be host:port, e.g. "127.0.0.1:9879"', True),
        ("", 'must be host:port, e.g. "127.0.0.1:9879"', True),
        ("localhost:0", "port must be a number from 1 to 65535", False),
        ("localhost:65536", "port must be a number from 1 to 65535", False),
        ("localhost:", "port must be a number from 1 to 65535", False),
        ("localhost:http", "port must be a number from 1 to 65535", False),
        ("localhost:\u00b2", "port must be a number from 1 to 65535", False),  # isdigit, not int
        ("localhost:\u0669", "port must be a number from 1 to 65535", False),  # Arabic-Indic 9
        ("::1:9879", "IPv6 address must be in brackets, e.g. [::1]:9879", False),
        ("[::1:9879", "IPv6 address must be in brackets, e.g. [::1]:9879", False),
        ("[::g]:9879", "[::g] is not an IPv6 address", False),
        ("[127.0.0.1]:9879", "[127.0.0.1] is not an IPv6 address", False),
        ("bad_host:9879", '"bad_host" is not a host name or IPv4 address', False),
        ("-host:9879", '"-host" is not a host name or IPv4 address', False),
    ],
)
def test_refused(text: str, problem: str, not_host_port: bool) -> None:
    with pytest.raises(InvalidListenAddress) as raised:
        parse_listen_address(text)
    assert raised.value.problem == str(raised.value) == problem
    assert raised.value.not_host_port is not_host_port


def test_default_host_and_any_port_for_the_metrics_server() -> None:
    assert parse_listen_address(":9879", default_host="127.0.0.1") == ("127.0.0.1", 9879)
    assert parse_listen_address("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)
    with pytest.raises(InvalidListenAddress, match="from 0 to 65535"):
        parse_listen_address("127.0.0.1:65536", any_port=True)
