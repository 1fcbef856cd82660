"""The egress policy of ``api_call``: the address rule, the allow-list, and the network
backend that resolves, checks and connects to the address it checked.

Nothing here sends a packet to a private or metadata address: the resolver is a fake
mapping and the connector (what would open sockets) records what it is asked and answers
from canned HTTP responses. The one real connection is to a local server on 127.0.0.1
under an explicit allow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import httpcore
import pytest
from httpkit import HttpServer
from hypothesis import given
from hypothesis import strategies as st
from kit import DEADLINE_SECONDS
from nodekit import make_block, node_kit, run_node

from tradeflow.domain.egress import AllowList, literal_address, refusal
from tradeflow.domain.errors import ConfigurationError, EgressRefused, InvalidRequest
from tradeflow.engine.egress import EgressBackend
from tradeflow.engine.model import Block, NodeConfig, RetryConfig
from tradeflow.engine.nodes.registry import HttpPool
from tradeflow.engine.resilience import run_protected
from tradeflow.workflow.executor import WorkflowExecutor

NAT64 = ip_network("64:ff9b::/96")
PUBLIC = "93.184.216.34"
"""What the fake resolver answers for a public-looking name (never connected to)."""


# -- the address rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback address"),
        ("127.255.0.9", "loopback address"),
        ("::1", "loopback address"),
        ("10.1.2.3", "private address"),
        ("172.16.0.1", "private address"),
        ("192.168.1.1", "private address"),
        ("fc00::1", "private address"),
        ("169.254.1.1", "link-local address"),
        ("fe80::1", "link-local address"),
        ("169.254.169.254", "cloud metadata address"),
        ("fd00:ec2::254", "cloud metadata address"),
        ("100.100.100.200", "cloud metadata address"),
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("224.0.0.1", "multicast address"),
        ("ff02::1", "multicast address"),
        ("240.0.0.1", "reserved address"),
        ("255.255.255.255", "reserved address"),
        ("100.64.0.1", "carrier-grade NAT address"),
        ("::ffff:127.0.0.1", "loopback address (embeds 127.0.0.1)"),
        ("::ffff:169.254.169.254", "cloud metadata address (embeds 169.254.169.254)"),
        ("2002:a00:1::", "private address (embeds 10.0.0.1)"),
        ("64:ff9b::7f00:1", "loopback address (embeds 127.0.0.1)"),
        ("fec0::1", "site-local address"),
        ("2001:db8::1", "private address"),
    ],
)
def test_forbidden_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    """Each forbidden kind of address is refused, named by what it is."""
    assert refusal(ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", PUBLIC, "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    """A public address, also in IPv4-mapped or NAT64 form, is not refused."""
    assert refusal(ip_address(address)) is None


@given(st.ip_addresses())
def test_only_global_addresses_pass(address: IPv4Address | IPv6Address) -> None:
    """Whatever passes reaches a global, non-multicast address (itself, or the IPv4
    address an IPv4-mapped or NAT64 form embeds)."""
    if refusal(address) is None:
        reached: IPv4Address | IPv6Address = address
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            reached = address.ipv4_mapped
        elif address in NAT64:
            reached = IPv4Address(int(address) & 0xFFFFFFFF)
        assert reached.is_global and not reached.is_multicast


@given(
    st.one_of(
        st.ip_addresses(network="127.0.0.0/8"),
        st.ip_addresses(network="10.0.0.0/8"),
        st.ip_addresses(network="172.16.0.0/12"),
        st.ip_addresses(network="192.168.0.0/16"),
        st.ip_addresses(network="169.254.0.0/16"),
        st.ip_addresses(network="100.64.0.0/10"),
        st.ip_addresses(network="fc00::/7"),
        st.ip_addresses(network="fe80::/10"),
    )
)
def test_every_address_of_a_forbidden_network_is_refused(
    address: IPv4Address | IPv6Address,
) -> None:
    """Loopback, private, link-local and shared ranges are refused as a whole, and so are
    their IPv4-mapped IPv6 forms."""
    assert refusal(address) is not None
    if isinstance(address, IPv4Address):
        assert refusal(IPv6Address(f"::ffff:{address}")) is not None


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("10.0.0.1.", "10.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
    ],
)
def test_odd_spellings_are_read_as_the_address_they_stand_for(host: str, address: str) -> None:
    """Every IPv4 spelling a resolver accepts is read as that address."""
    assert literal_address(host) == ip_address(address)


@pytest.mark.parametrize("host", ["localhost", "api.example.com", "1.2.3.4.5", "08", "0x1g", ""])
def test_names_are_not_addresses(host: str) -> None:
    assert literal_address(host) is None


# -- the allow-list --------------------------------------------------------------------------


def test_allow_list_matches_host_and_port() -> None:
    """``host`` allows any port, ``host:port`` that port; spellings of one address and
    the case of a name do not matter."""
    allow = AllowList.parse(["127.0.0.1:8080", "Prices.Local", "[::1]:9000"])
    assert allow.permits("127.0.0.1", 8080)
    assert allow.permits("0x7f000001", 8080)
    assert not allow.permits("127.0.0.1", 8081)
    assert allow.permits("prices.local.", 1234)
    assert allow.permits("::1", 9000)
    assert not allow.permits("::1", 9001)
    assert not allow.permits("localhost", 8080)


@pytest.mark.parametrize(
    "entry",
    [
        "host:",
        "host:http",
        "host:70000",
        "[::1]x",
        ":80",
        "a.b:80:90",
        "*.example.com",
        "[a.b]:80",
        "[127.0.0.1]:80",
        "http://prices.local",
        "prices.local/v1",
        "-bad.example",
        "a..b",
    ],
)
def test_allow_list_refuses_malformed_entries(entry: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        AllowList.parse([entry])
    assert str(refused.value) == (
        "TRADEFLOW_EGRESS_ALLOW: expected comma-separated host or host:port entries (a name "
        "or an address, no wildcard; port 1-65535, IPv6 as [addr]:port), found " + repr(entry)
    )


def test_allow_list_takes_names_addresses_and_bare_ipv6() -> None:
    allow = AllowList.parse(["price_api", "prices.local.", "::1", "[fe80::1]", "10.0.0.7:8080"])
    assert allow.permits("PRICE_API", 80)
    assert allow.permits("prices.local", 443)
    assert allow.permits("[::1]", 8080)
    assert allow.permits("fe80::1", 1)
    assert allow.permits("10.0.0.7", 8080) and not allow.permits("10.0.0.7", 8081)


# -- the backend: resolve, check, connect to the checked address ------------------------------


class FakeResolver:
    """Host -> addresses; records every lookup. A name it does not know does not resolve."""

    def __init__(self, table: Mapping[str, Iterable[str]]) -> None:
        self.table = {host: list(addresses) for host, addresses in table.items()}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return self.table[host]


class RecordingStream(httpcore.AsyncMockStream):
    """A canned HTTP answer; records the SNI name TLS was started with and what is
    written."""

    def __init__(self, answers: list[bytes], tls: list[str | None], written: list[bytes]) -> None:
        super().__init__(list(answers))
        self._tls = tls
        self._written = written

    async def write(
        self,
        buffer: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> None:
        """Records each request (head and body) as sent."""
        self._written.append(buffer)

    async def start_tls(
        self,
        ssl_context: object,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        self._tls.append(server_hostname)
        return self


class Connector(httpcore.AsyncNetworkBackend):
    """Stands in for httpcore's socket backend: opens nothing, records each connection
    asked for, and answers with the canned responses for that address (in turn, on one
    connection)."""

    def __init__(self, answers: Mapping[str, list[bytes]] | None = None) -> None:
        self.answers = dict(answers or {})
        self.connected: list[tuple[str, int]] = []
        self.tls: list[str | None] = []
        self.written: list[bytes] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        return RecordingStream(self.answers[host], self.tls, self.written)

    async def sleep(self, seconds: float) -> None:
        pass


def answer(status: int, body: bytes = b'{"ok": true}', *headers: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in headers)
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def pool(resolver: FakeResolver, connector: Connector, allow: Iterable[str] = ()) -> HttpPool:
    return HttpPool(egress_allow=allow, resolver=resolver, connector=connector)


def api_call(url: str) -> Block:
    return make_block("providers", "api_call", {"url": url})


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1", "api_call to 127.0.0.1: loopback address, refused by the egress policy"),
        ("0x7f000001", "api_call to 0x7f000001: loopback address (127.0.0.1), refused"),
        ("2130706433", "api_call to 2130706433: loopback address (127.0.0.1), refused"),
        ("127.1", "api_call to 127.1: loopback address (127.0.0.1), refused"),
        ("[::ffff:7f00:1]", "loopback address (embeds 127.0.0.1)"),
        ("169.254.169.254", "api_call to 169.254.169.254: cloud metadata address, refused"),
        ("metadata.google.internal", "api_call to metadata.google.internal: cloud metadata host"),
        ("localhost", "api_call to localhost: resolves to 127.0.0.1, a loopback address"),
        ("intranet.corp", "api_call to intranet.corp: resolves to 10.0.0.7, a private address"),
    ],
)
@pytest.mark.asyncio
async def test_forbidden_destinations_are_refused_before_any_connection(
    host: str, shown: str
) -> None:
    """Literal addresses in any spelling, metadata names and names resolving to a
    forbidden address fail the node with EgressRefused; nothing is connected to."""
    resolver = FakeResolver({"localhost": ["127.0.0.1"], "intranet.corp": [PUBLIC, "10.0.0.7"]})
    connector = Connector()
    async with node_kit(http_pool=pool(resolver, connector)) as kit:
        with pytest.raises(EgressRefused) as refused:
            await run_node(kit, api_call(f"http://{host}/api"))
    assert shown in str(refused.value)
    assert "(allow it with TRADEFLOW_EGRESS_ALLOW)" in str(refused.value)
    assert connector.connected == []
    literal = literal_address(host) is not None or host.startswith("metadata")
    assert resolver.asked == ([] if literal else [host])


@pytest.mark.asyncio
async def test_the_backend_reads_every_spelling_of_an_address() -> None:
    """httpx itself rejects ``0177.0.0.1`` as an invalid URL; the backend refuses it (and
    every other spelling) all the same, should any client hand it over."""
    connector = Connector()
    backend = EgressBackend(AllowList(), resolver=FakeResolver({}), connector=connector)
    for host in ("0177.0.0.1", "0x7f.1", "017700000001", "0x7F000001"):
        with pytest.raises(EgressRefused, match=r"loopback address \(127\.0\.0\.1\)"):
            await backend.connect_tcp(host, 80)
    async with node_kit(http_pool=pool(FakeResolver({}), connector)) as kit:
        with pytest.raises(InvalidRequest, match=r"properties\.url"):
            await run_node(kit, api_call("http://0177.0.0.1/api"))
    assert connector.connected == []


@pytest.mark.asyncio
async def test_connects_to_the_address_it_checked_and_verifies_tls_for_the_name() -> None:
    """The connection goes to the resolved, checked address (not the name, which a second
    lookup could rebind); TLS is started for the name; one lookup per connection."""
    resolver = FakeResolver({"api.example.test": [PUBLIC]})
    connector = Connector({PUBLIC: [answer(200, b'{"price": 1}')] * 2})
    block = make_block("providers", "api_call", {"url": "https://api.example.test/p"})
    async with node_kit(http_pool=pool(resolver, connector)) as kit:
        outputs = await run_node(kit, block)
        resolver.table["api.example.test"] = ["127.0.0.1"]  # a rebinding answer from now on
        assert await run_node(kit, block) == outputs  # the kept-alive checked connection
    assert outputs == {"result": {"price": 1}, "status_code": 200}
    assert connector.connected == [(PUBLIC, 443)]
    assert connector.tls == ["api.example.test"]
    assert resolver.asked == ["api.example.test"]


@pytest.mark.parametrize(
    "location", ["http://127.0.0.1:8080/admin", "http://localhost/metrics", "http://[::1]/"]
)
@pytest.mark.asyncio
async def test_a_redirect_to_a_forbidden_address_is_refused(location: str) -> None:
    """A public host answering with a redirect to loopback: the hop is checked like the
    first request and refused; only the public address was ever connected to."""
    resolver = FakeResolver({"api.example.test": [PUBLIC], "localhost": ["127.0.0.1"]})
    connector = Connector({PUBLIC: [answer(302, b"", f"Location: {location}")]})
    async with node_kit(http_pool=pool(resolver, connector)) as kit:
        with pytest.raises(EgressRefused, match="loopback address"):
            await run_node(kit, api_call("http://api.example.test/p"))
    assert connector.connected == [(PUBLIC, 80)]


@pytest.mark.asyncio
async def test_a_redirect_to_a_public_address_is_followed() -> None:
    resolver = FakeResolver({"a.example.test": [PUBLIC], "b.example.test": ["8.8.4.4"]})
    connector = Connector(
        {
            PUBLIC: [answer(301, b"", "Location: http://b.example.test/v2")],
            "8.8.4.4": [answer(200, b'{"v": 2}')],
        }
    )
    async with node_kit(http_pool=pool(resolver, connector)) as kit:
        outputs = await run_node(kit, api_call("http://a.example.test/v1"))
    assert outputs == {"result": {"v": 2}, "status_code": 200}
    assert connector.connected == [(PUBLIC, 80), ("8.8.4.4", 80)]


@pytest.mark.asyncio
async def test_an_allowed_host_is_connected_to_by_name() -> None:
    """A host on the allow-list skips the check (it may be private) and is connected to as
    written, host-wide or on its port only."""
    resolver = FakeResolver({})
    connector = Connector({"prices.internal": [answer(200)], "10.0.0.9": [answer(200)]})
    allow = ["prices.internal", "10.0.0.9:8080"]
    async with node_kit(http_pool=pool(resolver, connector, allow)) as kit:
        await run_node(kit, api_call("http://prices.internal:81/p"))
        await run_node(kit, api_call("http://10.0.0.9:8080/p"))
        with pytest.raises(EgressRefused, match=r"10\.0\.0\.9: private address"):
            await run_node(kit, api_call("http://10.0.0.9:8081/p"))
    assert connector.connected == [("prices.internal", 81), ("10.0.0.9", 8080)]
    assert resolver.asked == []


@pytest.mark.asyncio
async def test_any_forbidden_address_among_several_refuses_the_host() -> None:
    backend = EgressBackend(
        AllowList(), resolver=FakeResolver({"mixed.test": [PUBLIC, "::1"]}), connector=Connector()
    )
    with pytest.raises(EgressRefused, match="resolves to ::1, a loopback address"):
        await backend.connect_tcp("mixed.test", 443)


@pytest.mark.asyncio
async def test_an_unknown_name_is_a_retryable_transport_failure() -> None:
    """A name that does not resolve is a connect error (ExternalServiceError), not a
    refusal: DNS may come back."""
    from tradeflow.domain.errors import ExternalServiceError

    async with node_kit(http_pool=pool(FakeResolver({}), Connector())) as kit:
        with pytest.raises(ExternalServiceError, match="ConnectError: cannot resolve nowhere"):
            await run_node(kit, api_call("http://nowhere.test/p"))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "refusal",
    [
        EgressRefused("127.0.0.1", "loopback address"),
        # A missing or unbound secret: the process is not set up for it, no retry helps.
        ConfigurationError("secret 'BINANCE_KEY' is bound to no host"),
    ],
)
async def test_a_refusal_is_never_retried(refusal: Exception) -> None:
    """A refusal under a retry policy fails at the first attempt."""
    attempts = 0

    async def call() -> None:
        nonlocal attempts
        attempts += 1
        raise refusal

    config = NodeConfig(retry=RetryConfig(max_attempts=3, initial_interval=0.01))
    with pytest.raises(type(refusal)):
        await run_protected(call, node_id="n", config=config, breaker=None)
    assert attempts == 1


@pytest.mark.asyncio
async def test_the_seed_executor_refuses_loopback_with_no_configuration() -> None:
    """The base executor, configured with nothing, refuses a loopback api_call (a literal
    address: refused before any lookup or connection)."""
    definition = {
        "blocks": [
            {
                "id": "get",
                "category": "providers",
                "type": "api_call",
                "properties": {"url": "http://127.0.0.1:9/metrics"},
                "config": {"retry": {"max_attempts": 3, "initial_interval": 0.01}},
            }
        ]
    }
    async with WorkflowExecutor(definition) as executor:
        result = await asyncio.wait_for(executor.execute(), DEADLINE_SECONDS)
    assert result["status"] == "failed"
    assert "127.0.0.1: loopback address, refused by the egress policy" in str(result["error"])


@pytest.mark.asyncio
async def test_a_local_server_answers_under_an_explicit_allow(http_server: HttpServer) -> None:
    """The real path (system resolver, real sockets) to a local server, allowed explicitly
    by address and port; another port of the same address stays refused."""
    http_server.answers["/health"] = (200, b'{"up": true}')
    async with node_kit(http_pool=http_server.pool()) as kit:
        outputs = await run_node(kit, api_call(http_server.url("/health")))
        with pytest.raises(EgressRefused, match="loopback address"):
            await run_node(kit, api_call(f"http://127.0.0.1:{http_server.port + 1}/health"))
    assert outputs == {"result": {"up": True}, "status_code": 200}


@pytest.mark.asyncio
async def test_the_shared_client_keeps_no_cookie() -> None:
    """One client serves every execution and bot of the process: a cookie set by one
    call's answer is not stored, so no later call sends it."""
    resolver = FakeResolver({"api.example.test": [PUBLIC]})
    login = answer(200, b"{}", "Set-Cookie: session=BOT_A_SESSION; Path=/")
    connector = Connector({PUBLIC: [login, answer(200, b"{}")]})
    http_pool = pool(resolver, connector)
    async with node_kit(http_pool=http_pool) as kit:
        await run_node(kit, api_call("http://api.example.test/login"))
        await run_node(kit, api_call("http://api.example.test/me"))
        assert len(http_pool.client.cookies.jar) == 0
    sent = b"".join(connector.written)
    login_request, me_request = sent.split(b"\r\n\r\n", 1)[0], sent.split(b"GET /me ", 1)[1]
    assert login_request.startswith(b"GET /login ") and b"Host: api.example.test" in me_request
    assert b"cookie" not in me_request.lower()
