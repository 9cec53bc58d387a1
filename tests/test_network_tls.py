"""Exposure: loopback by default, plain HTTP on a network address only when configured by name,
and TLS 1.2+ with forward-secret AEAD suites only, its handshake under the same deadline."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest

from frontend import serve
from frontend.config import FrontendConfig
from protocol.config import ConfigError
from tests.conftest import PYTHON, ROOT, World
from tests.live import Live, make_token, start_frontend, stop_frontend


def config(world: World, **changes: object) -> FrontendConfig:
    return dataclasses.replace(world.frontend, **changes)  # type: ignore[arg-type]


# -- where it listens --------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "lwp.example.org"])
def test_plain_http_on_a_network_address_is_refused(world: World, host: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        serve.check_exposure(config(world, listen=host))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_plain_http_on_loopback_needs_no_permission(world: World, host: str) -> None:
    serve.check_exposure(config(world, listen=host))


def test_plain_http_on_the_network_when_allowed_is_logged_as_a_warning(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "lwp.frontend"):
        serve.check_exposure(config(world, listen="0.0.0.0", allow_plain_http_on_network=True))
    assert "plain HTTP on 0.0.0.0" in caplog.text


def start_with(world: World, name: str, frontend: str) -> subprocess.CompletedProcess[str]:
    """Run the frontend process on the world's settings plus a [frontend] table."""
    path = os.path.join(world.base, name)
    with open(world.config) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(f"{text}\n[frontend]\n{frontend}\n")
    return subprocess.run([PYTHON, "-m", "frontend", "--config", path], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_the_frontend_process_refuses_to_start_on_a_network_address(world: World) -> None:
    done = start_with(world, "exposed.toml", 'listen = "0.0.0.0"\nport = 5999')
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr


def test_a_certificate_without_its_key_is_a_configuration_error(world: World) -> None:
    done = start_with(world, "half-tls.toml", 'tls_cert = "/etc/ssl/certs/x.pem"')
    assert done.returncode == 2 and "give both or neither" in done.stderr


# -- TLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_live(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    live = start_frontend(world, f'tls_cert = "{cert}"\ntls_key = "{key}"\nheader_timeout = 1.5',
                          scheme="https", read=make_token(world, "read"))
    try:
        yield live
    finally:
        stop_frontend(live)


def client(minimum: ssl.TLSVersion, maximum: ssl.TLSVersion,
           ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Let the client offer what the server must refuse (OpenSSL's own floor would stop it first).
    ctx.set_ciphers((ciphers or "DEFAULT") + ":@SECLEVEL=0")
    ctx.minimum_version, ctx.maximum_version = minimum, maximum
    return ctx


def handshake(live: Live, ctx: ssl.SSLContext) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            request = (f"GET /api/v1/containers HTTP/1.1\r\nHost: x\r\nprivate-token: {live.read}"
                       "\r\nConnection: close\r\n\r\n")
            tls.sendall(request.encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            version, cipher = tls.version() or "", (tls.cipher() or ("",))[0]
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and isinstance(json.loads(body), list), head
    return version, cipher


def test_tls13_and_tls12_with_forward_secret_aead_are_served(tls_live: Live) -> None:
    v13 = ssl.TLSVersion.TLSv1_3
    assert handshake(tls_live, client(v13, v13))[0] == "TLSv1.3"
    v12 = ssl.TLSVersion.TLSv1_2
    for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                  "ECDHE-RSA-CHACHA20-POLY1305"):
        assert handshake(tls_live, client(v12, v12, suite)) == ("TLSv1.2", suite)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_12_is_refused(tls_live: Live, version: ssl.TLSVersion) -> None:
    # asyncio's TLS server ends a failed handshake by closing, without an alert (EOF).
    with pytest.raises(ssl.SSLError, match="(?i)protocol.version|unsupported protocol|closed .EOF"):
        handshake(tls_live, client(version, version))
    v13 = ssl.TLSVersion.TLSv1_3
    assert handshake(tls_live, client(v13, v13))[0] == "TLSv1.3"  # refused, not broken


@pytest.mark.parametrize("suite", ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA",
                                   "AES256-SHA256", "DHE-RSA-AES128-GCM-SHA256"])
def test_tls12_suites_without_forward_secrecy_or_aead_are_refused(tls_live: Live,
                                                                  suite: str) -> None:
    v12 = ssl.TLSVersion.TLSv1_2
    # The client can offer it (the handshake starts); the server ends it without a shared suite.
    with pytest.raises(ssl.SSLError, match="(?i)handshake failure|no shared cipher|closed .EOF"):
        handshake(tls_live, client(v12, v12, suite))
    assert handshake(tls_live, client(v12, v12, "ECDHE-RSA-AES128-GCM-SHA256"))[0] == "TLSv1.2"


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_live: Live) -> None:
    with socket.create_connection(("127.0.0.1", tls_live.port), timeout=5) as raw:
        raw.sendall(b"GET /api/v1/containers HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/")


def test_a_stalled_tls_handshake_is_cut_off_at_the_deadline(tls_live: Live) -> None:
    with socket.create_connection(("127.0.0.1", tls_live.port), timeout=10) as raw:
        start = time.monotonic()
        try:
            closed = raw.recv(1024) == b""
        except ConnectionResetError:
            closed = True
        held = time.monotonic() - start
    assert closed and held < 1.5 + 1.0, held
