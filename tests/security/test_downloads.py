"""Downloads of http(s) base models and data: deadline, redirects, address filter, size cap.

The address filter is tested as a pure table; the rest against real HTTP(S) servers on loopback,
which the filter's explicit opt-in (``allowed_networks`` / ``KONDENSE_ALLOW_PRIVATE_DOWNLOADS=1``) makes
reachable.
"""

from __future__ import annotations

import http.server
import ipaddress
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kondense.compression.errors import BadInputError
from kondense.compression.uris import ALL_NETWORKS, DownloadPolicy, UriResolver, address_problem

PAYLOAD = b"0123456789" * 100


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata endpoint
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fd00::1", "private"),
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),  # documentation range
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("not-an-ip", "not an IP address"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    problem = address_problem(address)
    assert problem is not None and kind in problem


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(address) is None


# ---------------------------------------------------------------------------------------------
# real servers on loopback

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Server:
    def __init__(self, routes: dict[str, Handler], tls: ssl.SSLContext | None = None) -> None:
        self.hosts: list[str] = []
        routes_ = routes
        hosts = self.hosts

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                hosts.append(self.headers.get("Host", ""))
                handler = routes_.get(self.path)
                if handler is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                handler(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.port = self.httpd.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(body: bytes = PAYLOAD, *, length: bool = True) -> Handler:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        if length:
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(body), 100):
            piece = body[i : i + 100]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    return handle


def redirect(location: str) -> Handler:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return handle


def drip(stop: threading.Event) -> Handler:
    """A body that never ends: one byte every 50 ms (each read well within the read timeout)."""

    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10**6))
        h.end_headers()
        while not stop.is_set():
            try:
                h.wfile.write(b"x")
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)

    return handle


@pytest.fixture
def servers() -> Iterator[Callable[..., _Server]]:
    started: list[_Server] = []

    def start(routes: dict[str, Handler], tls: ssl.SSLContext | None = None) -> _Server:
        server = _Server(routes, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (made by the real openssl)."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def local_policy(**changes: object) -> DownloadPolicy:
    return replace(DownloadPolicy(allowed_networks=ALL_NETWORKS), **changes)  # type: ignore[arg-type]


def resolver(tmp_path: Path, policy: DownloadPolicy, limit: int | None = None) -> UriResolver:
    return UriResolver(download_dir=tmp_path, policy=policy, download_limit=limit)


def test_loopback_is_refused_without_the_opt_in(servers, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("KONDENSE_ALLOW_PRIVATE_DOWNLOADS", raising=False)
    server = servers({"/model.onnx": ok()})
    for url in (f"{server.url}/model.onnx", f"http://localhost:{server.port}/model.onnx"):
        with pytest.raises(BadInputError, match="loopback address") as info:
            UriResolver(download_dir=tmp_path).fetch(url, "--model")
        assert "KONDENSE_ALLOW_PRIVATE_DOWNLOADS=1" in str(info.value) and url in str(info.value)
    assert server.hosts == []  # refused before any connection
    assert list(tmp_path.iterdir()) == []


def test_the_opt_in_allows_a_local_server(servers, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KONDENSE_ALLOW_PRIVATE_DOWNLOADS", "1")
    server = servers({"/model.onnx": ok()})
    path = UriResolver(download_dir=tmp_path).fetch(f"{server.url}/model.onnx", "--model")
    assert path.read_bytes() == PAYLOAD


def test_a_name_with_any_private_address_is_refused(servers, tmp_path) -> None:
    server = servers({"/m": ok()})
    policy = DownloadPolicy(allowed_networks=(), resolve=lambda host, port: ["8.8.8.8", "10.0.0.7"])
    with pytest.raises(BadInputError, match=r"models\.example resolves to 10\.0\.0\.7 is a private"):
        resolver(tmp_path, policy).fetch(f"http://models.example:{server.port}/m", "--model")
    assert server.hosts == []


def test_the_connection_goes_to_the_checked_address_with_the_original_host(servers, tmp_path) -> None:
    """No second DNS lookup: the resolved, checked address is the one connected to."""
    server = servers({"/m": ok()})
    policy = local_policy(resolve=lambda host, port: ["127.0.0.1"])
    path = resolver(tmp_path, policy).fetch(f"http://models.example:{server.port}/m", "--model")
    assert path.read_bytes() == PAYLOAD
    assert server.hosts == [f"models.example:{server.port}"]


def test_redirects_are_followed_and_checked_again(servers, tmp_path) -> None:
    target = servers({"/model.onnx": ok()})
    hop = servers({"/a": redirect(f"{target.url}/model.onnx")})
    assert resolver(tmp_path, local_policy()).fetch(f"{hop.url}/a", "--model").read_bytes() == PAYLOAD
    # only loopback is allowed besides public addresses: the redirect's target is checked again
    jump = servers({"/a": redirect(f"http://internal.example:{target.port}/model.onnx")})
    policy = DownloadPolicy(
        allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        resolve=lambda host, port: ["127.0.0.1"] if host == "public.example" else ["10.9.9.9"],
    )
    with pytest.raises(BadInputError, match=r"internal\.example resolves to 10\.9\.9\.9 is a private"):
        resolver(tmp_path, policy).fetch(f"http://public.example:{jump.port}/a", "--model")
    assert target.hosts == [f"127.0.0.1:{target.port}"]  # only the first, allowed chain got there


def test_the_opt_in_may_name_networks(monkeypatch) -> None:
    monkeypatch.setenv("KONDENSE_ALLOW_PRIVATE_DOWNLOADS", "10.20.0.0/16, 127.0.0.0/8")
    policy = DownloadPolicy()
    assert policy.refusal("10.20.3.4") is None and policy.refusal("127.0.0.1") is None
    assert "private" in (policy.refusal("10.21.0.1") or "")
    assert "link-local" in (policy.refusal("169.254.169.254") or "")
    monkeypatch.setenv("KONDENSE_ALLOW_PRIVATE_DOWNLOADS", "everything")
    with pytest.raises(BadInputError, match="KONDENSE_ALLOW_PRIVATE_DOWNLOADS: expected 1 or a list"):
        DownloadPolicy()


def test_redirect_loops_stop(servers, tmp_path) -> None:
    server = servers({"/loop": redirect("/loop")})
    with pytest.raises(BadInputError, match="more than 5 redirects"):
        resolver(tmp_path, local_policy()).fetch(f"{server.url}/loop", "--model")


def test_https_to_http_redirect_is_refused(servers, tmp_path, tls_files) -> None:
    cert, key = tls_files
    plain = servers({"/model.onnx": ok()})
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    secure = servers({"/model.onnx": ok(), "/down": redirect(f"{plain.url}/model.onnx")}, tls=server_tls)
    client_tls = ssl.create_default_context(cafile=str(cert))
    policy = local_policy(verify=client_tls)
    # https itself works (certificate checked against the original host name, not the address)
    url = f"https://localhost:{secure.port}/model.onnx"
    assert resolver(tmp_path, policy).fetch(url, "--model").read_bytes() == PAYLOAD
    with pytest.raises(BadInputError, match="refusing the redirect from https to plain http"):
        resolver(tmp_path, policy).fetch(f"https://localhost:{secure.port}/down", "--model")
    assert plain.hosts == []
    # and an untrusted certificate is refused with a clear message
    with pytest.raises(BadInputError, match="cannot download"):
        resolver(tmp_path, local_policy()).fetch(url, "--model")


def test_the_total_deadline_stops_a_slow_drip(servers, tmp_path) -> None:
    stop = threading.Event()
    server = servers({"/slow": drip(stop)})
    try:
        with pytest.raises(BadInputError, match="1 s download deadline"):
            resolver(tmp_path, local_policy(deadline_s=1.0, read_timeout_s=30.0)).fetch(
                f"{server.url}/slow", "--model"
            )
    finally:
        stop.set()
    assert list(tmp_path.iterdir()) == []  # the partial file is removed


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_the_size_cap_holds_with_and_without_a_declared_length(servers, tmp_path, declared) -> None:
    server = servers({"/big": ok(PAYLOAD, length=declared)})
    with pytest.raises(BadInputError, match="999-byte limit"):
        resolver(tmp_path, local_policy(limit_bytes=999)).fetch(f"{server.url}/big", "--model")
    assert list(tmp_path.iterdir()) == []
    assert (
        resolver(tmp_path, local_policy(limit_bytes=1000)).fetch(f"{server.url}/big", "--m").stat().st_size
        == 1000
    )


def test_the_size_cap_and_deadline_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("KONDENSE_DOWNLOAD_LIMIT_BYTES", "12345")
    monkeypatch.setenv("KONDENSE_DOWNLOAD_DEADLINE_S", "7.5")
    policy = DownloadPolicy()
    assert (policy.limit_bytes, policy.deadline_s) == (12345, 7.5)
    monkeypatch.setenv("KONDENSE_DOWNLOAD_DEADLINE_S", "soon")
    with pytest.raises(BadInputError, match="KONDENSE_DOWNLOAD_DEADLINE_S: must be a positive number"):
        DownloadPolicy()


def test_unreachable_and_missing_give_clear_errors(servers, tmp_path) -> None:
    server = servers({})
    with pytest.raises(BadInputError, match="HTTP 404"):
        resolver(tmp_path, local_policy()).fetch(f"{server.url}/absent.onnx", "--model")
    with pytest.raises(BadInputError, match=r"cannot resolve no-such-host\.invalid"):
        resolver(tmp_path, DownloadPolicy()).fetch("http://no-such-host.invalid/m.onnx", "--model")
    with pytest.raises(BadInputError, match="no user:password@"):
        resolver(tmp_path, local_policy()).fetch(f"http://u:p@127.0.0.1:{server.port}/m", "--model")


def test_a_hanging_name_lookup_is_bounded_by_the_deadline(tmp_path) -> None:
    release = threading.Event()

    def stuck(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["203.0.113.1"]

    try:
        with pytest.raises(BadInputError, match=r"looking up slow\.example took too long"):
            resolver(tmp_path, DownloadPolicy(deadline_s=0.5, resolve=stuck)).fetch(
                "http://slow.example/m", "--model"
            )
    finally:
        release.set()
