"""The relay's own rules (relay/node.py), without a proxy: who may use it, what it counts, what it refuses to be."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from cocoon.config import ConfigError, RelayConfig
from cocoon.core.errors import ApiError
from cocoon.ohttp.encap import REQUEST_MEDIA_TYPE
from cocoon.relay.node import RelayNode, subscriber_label


def relay(tmp_path: Path, **fields: object) -> RelayNode:
    return RelayNode(RelayConfig(name="relay-t", state_dir=str(tmp_path), **fields))  # type: ignore[arg-type]


def request(authorization: str | None = None, content_type: str = REQUEST_MEDIA_TYPE) -> object:
    headers = {"Content-Type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    return make_mocked_request("POST", "/ohttp", headers=headers)


def test_an_open_relay_must_stay_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="subscriber_tokens"):
        relay(tmp_path, api_host="0.0.0.0")
    with pytest.raises(ConfigError, match="via_relay"):
        relay(tmp_path, via_relay="http://elsewhere")
    relay(tmp_path, api_host="0.0.0.0", subscriber_tokens=["t1"])


def test_subscribers_are_counted_under_a_hash_never_their_token(tmp_path: Path) -> None:
    node = relay(tmp_path, subscriber_tokens=["alpha-token", "beta-token"])
    node._admit(request("Bearer alpha-token"))
    node._admit(request("bearer alpha-token"))
    node._admit(request("Bearer beta-token"))
    assert node.per_subscriber == {subscriber_label("alpha-token"): 2, subscriber_label("beta-token"): 1}
    shown = str(node.jsonstats())
    assert "alpha-token" not in shown and "beta-token" not in shown
    for bad in (None, "Bearer gamma", "Basic alpha-token", "alpha-token"):
        with pytest.raises(ApiError) as err:
            node._admit(request(bad))
        assert err.value.status == 401 and err.value.code == "invalid_api_key"
    assert sum(node.per_subscriber.values()) == 3


def test_only_encapsulated_requests_are_forwarded(tmp_path: Path) -> None:
    node = relay(tmp_path)
    with pytest.raises(ApiError) as err:
        node._admit(request(content_type="application/json"))
    assert err.value.status == 415 and REQUEST_MEDIA_TYPE in err.value.message
    node._admit(request())  # an open relay on loopback takes any device
