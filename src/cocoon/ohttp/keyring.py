"""A gateway's keys over time, without I/O: the clock is passed in.

The current key is replaced every `rotate_s`; the one it replaced still opens requests for `overlap_s` (clients
that fetched the configuration just before the rotation), then is forgotten. An encapsulated request naming a
key that is not live gets `unknown_key` (the gateway answers with the current configuration).

Replays: the `enc` of every request a key opened is remembered until that key is forgotten, and a second
request with the same `enc` is refused (`replayed`) before it is decrypted. `enc` is the requester's fresh
ephemeral public key, so no honest requester repeats one. The memory is bounded: a key that opened
`max_requests` requests is rotated out at once (it keeps its overlap for requests already on their way, and
refuses new ones once its memory is full): 250,000 remembered `enc`s take about 30 MB.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from cocoon.ohttp.encap import OhttpError, ResponseKeys, decapsulate_request, read_header
from cocoon.ohttp.keys import GatewayKey, KeyConfig, encode_keys


@dataclass
class _Live:
    key: GatewayKey
    retire_at: float | None = None  # None: the current key
    seen: set[bytes] = field(default_factory=set)


class KeyRing:
    def __init__(self, now: float, *, rotate_s: float = 3600.0, overlap_s: float = 300.0,
                 max_requests: int = 250_000,
                 new_key: Callable[[int], GatewayKey] = GatewayKey.generate) -> None:
        if rotate_s <= 0 or overlap_s < 0 or max_requests < 1:
            raise ValueError("rotate_s must be positive, overlap_s non-negative, max_requests at least 1")
        self.rotate_s = rotate_s
        self.overlap_s = overlap_s
        self.max_requests = max_requests
        self._new_key = new_key
        self._live: list[_Live] = [_Live(new_key(secrets.randbelow(256)))]  # the current key is last
        self._rotated_at = now
        self.rotations = 0
        self.replays = 0

    def _tick(self, now: float) -> None:
        if now - self._rotated_at >= self.rotate_s:
            self.rotate(now)
        self._live = [k for k in self._live if k.retire_at is None or k.retire_at > now]

    def rotate(self, now: float) -> KeyConfig:
        """A new current key now; the old one keeps opening requests for `overlap_s`."""
        old = self._live[-1]
        old.retire_at = now + self.overlap_s
        self._live.append(_Live(self._new_key((old.key.config.key_id + 1) % 256)))
        self._rotated_at = now
        self.rotations += 1
        return self._live[-1].key.config

    def current(self, now: float) -> KeyConfig:
        self._tick(now)
        return self._live[-1].key.config

    def published(self, now: float) -> bytes:
        """`application/ohttp-keys`: the current configuration only, so that new requests use it."""
        return encode_keys([self.current(now)])

    def open(self, enc_request: bytes, now: float, *, chunked: bool = False) -> tuple[bytes, ResponseKeys]:
        """The request inside `enc_request` and the keys for its response; OhttpError (reason `malformed`,
        `unknown_key`, `unsupported_suite`, `replayed` or `decrypt_failed`) when it cannot be served; `chunked`: a
        `message/ohttp-chunked-req`."""
        self._tick(now)
        head = read_header(enc_request)
        live = next((k for k in self._live if k.key.config.key_id == head.key_id), None)
        if live is None or len(live.seen) >= self.max_requests:
            raise OhttpError("unknown_key", f"key id {head.key_id} is not one of this gateway's current keys "
                                            f"(the current one is {self._live[-1].key.config.key_id}): fetch the "
                                            "key configuration again")
        if head.enc in live.seen:
            self.replays += 1
            raise OhttpError("replayed", "this encapsulated request was received before: a replay is refused")
        request, keys = decapsulate_request(live.key, enc_request, chunked=chunked)
        live.seen.add(head.enc)
        if len(live.seen) >= self.max_requests and live.retire_at is None:
            self.rotate(now)
        return request, keys
