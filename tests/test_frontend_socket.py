"""The frontend's port: served from the socket systemd (or `make run`) holds and passes as fd 3,
refused when that socket is not the configured one, and `make run` names whoever squats it."""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest

from frontend import serve
from protocol.config import ConfigError
from tests.conftest import PYTHON, ROOT, World, become
from tests.live import free_port, make_token

RUN_SERVICE = os.path.join(ROOT, "tools", "run_service.py")


def run_service() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_service", RUN_SERVICE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def listener(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def config_file(world: World, port: int, settings: str = "", listen: str = "127.0.0.1") -> str:
    path = os.path.join(world.base, f"socket-{port}-{time.monotonic_ns()}.toml")
    with open(world.config) as f:
        base = f.read()
    with open(path, "w") as f:
        f.write(f'{base}\n[frontend]\nlisten = "{listen}"\nport = {port}\n{settings}\n')
    return path


def activated(sock: socket.socket, config: str, log: str) -> subprocess.Popen[bytes]:
    """`python3 -m frontend` given `sock` as systemd gives it: fd 3, LISTEN_PID, LISTEN_FDS."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [PYTHON, "-c", run_service().ACTIVATE, str(sock.fileno()), PYTHON, "-m", "frontend",
             "--config", config], cwd=ROOT, stdout=out, stderr=out, pass_fds=(sock.fileno(),))


def text(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def get(port: int, token: str, ctx: ssl.SSLContext | None = None) -> tuple[bytes, object]:
    """One request sent as soon as the connection opens (no waiting for the server first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        conn = ctx.wrap_socket(raw) if ctx else raw
        with conn:
            conn.sendall(f"GET /api/v1/containers HTTP/1.1\r\nHost: x\r\n"
                         f"private-token: {token}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)


@contextmanager
def serving(world: World, sock: socket.socket, settings: str = "") -> Iterator[str]:
    """A frontend on the passed `sock`; yields its log file once it answers."""
    port = sock.getsockname()[1]
    log = os.path.join(world.base, f"activated-{port}.log")
    process = activated(sock, config_file(world, port, settings), log)
    try:
        deadline = time.monotonic() + 15
        while "listening on" not in text(log):
            assert process.poll() is None and time.monotonic() < deadline, text(log)
            time.sleep(0.05)
        yield log
    finally:
        stop(process)


# -- socket activation ---------------------------------------------------------------------------

def test_the_frontend_serves_on_the_socket_it_is_passed(world: World) -> None:
    read = make_token(world, "read")
    with listener() as sock, serving(world, sock) as log:
        # It did not bind a port of its own: ours is listening, so that bind would have failed.
        assert get(sock.getsockname()[1], read)[0] == b"HTTP/1.1 200 OK"
        assert "on the passed socket" in text(log)


def test_a_request_sent_while_the_frontend_restarts_waits_and_is_answered(world: World) -> None:
    read = make_token(world, "read")
    with listener() as sock:
        port = sock.getsockname()[1]
        with serving(world, sock):
            assert get(port, read)[0] == b"HTTP/1.1 200 OK"
        # No frontend now; the held socket still queues a client (no "connection refused").
        early = socket.create_connection(("127.0.0.1", port), timeout=20)
        early.sendall(f"GET /api/v1/containers HTTP/1.1\r\nHost: x\r\nprivate-token: {read}"
                      "\r\nConnection: close\r\n\r\n".encode())
        with early, serving(world, sock):
            data = b""
            while chunk := early.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK"), data[:200]


def test_tls_and_the_connection_guard_work_on_a_passed_socket(
        world: World, tmp_path: pytest.TempPathFactory) -> None:
    cert, key = f"{tmp_path}/cert.pem", f"{tmp_path}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    read = make_token(world, "read")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    settings = f'tls_cert = "{cert}"\ntls_key = "{key}"\nheader_timeout = 1.0'
    with listener() as sock, serving(world, sock, settings):
        port = sock.getsockname()[1]
        assert get(port, read, ctx)[0] == b"HTTP/1.1 200 OK"
        # The guard's deadline: a connection that sends nothing is closed after header_timeout.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""
            assert time.monotonic() - started < 5


@pytest.mark.security
def test_a_passed_socket_on_another_port_than_configured_is_refused(world: World) -> None:
    with listener() as sock:
        config = config_file(world, free_port())
        log = os.path.join(world.base, "mismatch.log")
        process = activated(sock, config, log)
        assert process.wait(20) == 2
        assert "make lwp-frontend.socket's ListenStream= and /etc/lwp/lwp.toml agree" in \
            text(log)


@pytest.mark.security
def test_a_passed_socket_on_a_network_address_needs_tls_even_if_configured_alike(
        world: World) -> None:
    """The exposure check judges the socket's real address, not only the configuration's."""
    with listener("0.0.0.0") as sock:
        config = config_file(world, sock.getsockname()[1], listen="0.0.0.0")
        log = os.path.join(world.base, "exposed.log")
        assert activated(sock, config, log).wait(20) == 2
        assert "listening on '0.0.0.0': not a loopback address" in text(log)


def test_a_passed_descriptor_that_is_no_socket_is_a_configuration_error(world: World) -> None:
    log = os.path.join(world.base, "notasocket.log")
    with open(world.config, "rb") as not_a_socket, open(log, "ab") as out:
        process = subprocess.Popen(
            [PYTHON, "-c", run_service().ACTIVATE, str(not_a_socket.fileno()), PYTHON, "-m",
             "frontend", "--config", config_file(world, free_port())],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, pass_fds=(not_a_socket.fileno(),))
        assert process.wait(20) == 2
    assert "is not usable" in text(log) and "Traceback" not in text(log)


def test_check_passed_judges_the_real_address(world: World) -> None:
    cfg = world.frontend
    with listener("0.0.0.0") as sock:
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match="agree"):  # loopback configured, wildcard bound
            serve.check_passed(sock, cfg.__class__(**{**cfg.__dict__, "port": port}))
    with listener() as sock:
        port = sock.getsockname()[1]
        for listen in ("127.0.0.1", "localhost"):
            assert serve.check_passed(
                sock, cfg.__class__(**{**cfg.__dict__, "port": port, "listen": listen})) \
                == "127.0.0.1"
    with socket.socket() as unbound:
        with pytest.raises(ConfigError, match="not a listening TCP socket"):
            serve.check_passed(unbound, cfg)


def test_listen_variables_for_another_process_or_several_sockets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert serve.passed_socket() is None
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    with pytest.raises(ConfigError, match="exactly one ListenStream"):
        serve.passed_socket()
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ  # consumed


# -- make run ------------------------------------------------------------------------------------

@contextmanager
def squatted_as(user: str) -> Iterator[tuple[int, int]]:
    """A forked child, `user` for good, listening on a free loopback port: (its pid, the port)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            become(user)
            sock = listener()
            os.write(ready_w, str(sock.getsockname()[1]).encode())
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    port = int(os.read(ready_r, 16))
    try:
        yield pid, port
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, done_r, done_w):
            os.close(fd)


@pytest.mark.security
def test_make_run_refuses_a_port_another_user_holds_and_names_the_holder() -> None:
    service = run_service()
    with squatted_as("nobody") as (pid, port):
        with pytest.raises(service.PortTaken) as taken:
            service.bind_port("127.0.0.1", port)
    assert f"pid {pid} (python3, user nobody)" in str(taken.value)
    assert "Nothing was started" in str(taken.value)


@pytest.mark.security
def test_make_run_starts_nothing_when_its_port_is_taken(world: World) -> None:
    with squatted_as("nobody") as (pid, port):
        config = config_file(world, port)
        started = time.monotonic()
        done = subprocess.run([PYTHON, RUN_SERVICE], env={**os.environ, "LWP_CONFIG": config},
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert f"port {port} on 127.0.0.1 is already taken by pid {pid} (python3, user nobody)" \
        in done.stderr
    assert "admin token" not in done.stdout and time.monotonic() - started < 10


def test_make_run_binds_a_free_port_itself() -> None:
    service = run_service()
    with service.bind_port("127.0.0.1", free_port()) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        with pytest.raises(OSError) as again:
            listener("127.0.0.1", sock.getsockname()[1])
        assert again.value.errno == errno.EADDRINUSE
