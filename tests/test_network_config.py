"""The [frontend] network settings: the shipped file states the defaults, and a value that
would switch a defence off is a configuration error, not a silent default."""
from __future__ import annotations

import dataclasses
import os

import pytest

from frontend import config
from frontend.config import FrontendConfig
from protocol.config import ConfigError
from tests.conftest import ROOT

SHIPPED = os.path.join(ROOT, "packaging", "lwp.toml")
NETWORK_KEYS = ["tls_cert", "tls_key", "allow_plain_http_on_network", "trusted_proxies",
                "header_timeout", "max_connections", "auth_failures_burst",
                "auth_failures_per_minute", "auth_limit_clients", "auth_log_per_minute"]


def test_the_shipped_file_documents_every_network_key_at_its_default() -> None:
    shipped = config.load(SHIPPED)
    with open(SHIPPED) as f:
        text = f.read()
    defaults = {f.name: f.default for f in dataclasses.fields(FrontendConfig)
                if f.name in NETWORK_KEYS}
    assert set(defaults) == set(NETWORK_KEYS)
    for key, default in defaults.items():
        assert f"\n{key} = " in text, key
        assert getattr(shipped, key) == default, key


@pytest.mark.parametrize("setting", [
    "header_timeout = 0", "max_connections = 1", "auth_failures_burst = 0",
    "auth_failures_per_minute = 0", "auth_limit_clients = 0", "auth_log_per_minute = 0",
    'trusted_proxies = ["not-an-address"]', 'trusted_proxies = "10.0.0.1"',
    'tls_key = "/k.pem"', "allow_plain_http_on_network = 1",
])
def test_a_value_that_would_disable_a_defence_is_refused(tmp_path: object, setting: str) -> None:
    path = os.path.join(str(tmp_path), "lwp.toml")
    with open(path, "w") as f:
        f.write(f"[frontend]\n{setting}\n")
    with pytest.raises(ConfigError, match="frontend"):
        config.load(path)


def test_trusted_proxies_take_addresses_and_networks(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "lwp.toml")
    with open(path, "w") as f:
        f.write('[frontend]\ntrusted_proxies = ["10.0.0.5", "192.0.2.0/28", "fd00::/8"]\n')
    assert [str(n) for n in config.load(path).trusted_proxies] == [
        "10.0.0.5/32", "192.0.2.0/28", "fd00::/8"]
