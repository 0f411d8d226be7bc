"""The [pbx] keys: defaults, ranges, the TLS pair, and no clear-text secret off loopback."""

from __future__ import annotations

from typing import Any

import pytest

from agent import config
from agent.errors import ConfigError

BASE: dict[str, Any] = {"device": {"id": "d"}, "videosdk": {"enabled": False}}


def load(pbx: dict[str, Any], **sections: Any) -> config.Config:
    return config.from_dict({**BASE, "pbx": pbx, **sections})


def problems(pbx: dict[str, Any], **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(pbx, **sections)
    return e.value.problems


def test_defaults() -> None:
    cfg = load({}).pbx
    assert not cfg.enabled and cfg.listen == "0.0.0.0:8765" and cfg.sample_rate == 8000
    assert cfg.secret_header == "Secret" and cfg.tls_cert == "" and cfg.tls_key == ""
    assert cfg.max_calls == 4 and cfg.idle_timeout_s == 30.0
    assert cfg.max_message_bytes == 65536


@pytest.mark.parametrize(
    ("pbx", "key", "reason"),
    [
        ({"sample_rate": 44100}, "pbx.sample_rate", "must be one of 8000, 16000"),
        ({"max_calls": 0}, "pbx.max_calls", "must be between 1 and 64"),
        ({"max_calls": 65}, "pbx.max_calls", "must be between 1 and 64"),
        ({"max_calls": 2.5}, "pbx.max_calls", "must be an integer"),
        ({"idle_timeout_s": 0}, "pbx.idle_timeout_s", "must be between 1 and 3600 s"),
        ({"idle_timeout_s": "30"}, "pbx.idle_timeout_s", "must be a number"),
        ({"max_message_bytes": 100}, "pbx.max_message_bytes", "between 4096 and 1048576"),
        ({"max_message_bytes": 1 << 21}, "pbx.max_message_bytes", "between 4096 and 1048576"),
        ({"tls_cert": "pbx.crt", "tls_key": "/k"}, "pbx.tls_cert", "must be an absolute path"),
        ({"tls_cert": "/c"}, "pbx.tls_key", "both or neither"),
        ({"tls_key": "/k"}, "pbx.tls_cert", "both or neither"),
        ({"secret_header": "Bad Header"}, "pbx.secret_header", "HTTP header name"),
        ({"listen": "8765"}, "pbx.listen", "HOST:PORT"),
    ],
)
def test_bad_values_are_reported(pbx: dict[str, Any], key: str, reason: str) -> None:
    lines = problems(pbx)
    assert any(f": {key}: " in line and reason in line for line in lines), lines


def test_clear_text_on_a_network_address_is_refused() -> None:
    lines = problems({"enabled": True})  # 0.0.0.0:8765, no TLS
    assert len(lines) == 1 and ": pbx.listen: ws:// on 0.0.0.0" in lines[0]
    assert "pbx.tls_cert" in lines[0] and "security.allow_insecure" in lines[0]


@pytest.mark.parametrize(
    "pbx",
    [
        {"enabled": True, "listen": "127.0.0.1:8765"},
        {"enabled": True, "listen": "[::1]:8765"},
        {"enabled": True, "tls_cert": "/etc/field-agent/pbx.crt", "tls_key": "/etc/k.pem"},
        {"enabled": False},  # not served: not checked
    ],
)
def test_loopback_tls_or_disabled_are_fine(pbx: dict[str, Any]) -> None:
    cfg = load(pbx)  # raises ConfigError (the test fails) if refused
    assert cfg.pbx.enabled is pbx["enabled"]
    assert cfg.pbx.listen == pbx.get("listen", "0.0.0.0:8765")
    assert cfg.pbx.tls_cert == pbx.get("tls_cert", "")


def test_allow_insecure_permits_clear_text_on_the_lan() -> None:
    cfg = load({"enabled": True}, security={"allow_insecure": True})
    assert cfg.pbx.enabled and cfg.pbx.tls_cert == ""
