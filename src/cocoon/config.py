"""Settings, one model per role: a TOML file, then `COCOON_<FIELD>` environment overrides."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from cocoon.core.errors import CocoonError


class ConfigError(ValueError, CocoonError):
    pass


NETWORKS = ("devnet", "testnet", "mainnet")  # their global ids: ledger/network.py


def is_loopback(host: str) -> bool:
    """Whether a listener on `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Prices(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """nanoTON per token; multipliers in per-mille of the base price. `max_coefficient` is the dearest
    worker coefficient the registry admits (per-mille of these prices: 10,000 = ten times the list price); proxies
    refuse a worker announcing more, or anything ≤ 0."""

    price_per_token: int = 20
    worker_fee_per_token: int = 16
    prompt_multiplier: int = 1000
    cached_multiplier: int = 100
    completion_multiplier: int = 4000
    reasoning_multiplier: int = 4000
    max_coefficient: int = 10_000
    # nanoTON per second of input media (the media workload), at coefficient 1000
    price_per_media_second: int = 20_000
    worker_fee_per_media_second: int = 16_000


class MediaLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a worker's `media` workload accepts (cocoon/media): the input's size and length, the output's frame
    size. The proxy reserves a job's money for at most `max_seconds` of input."""

    max_input_bytes: Annotated[int, msgspec.Meta(gt=0)] = 256 * 1024 * 1024
    max_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    max_width: Annotated[int, msgspec.Meta(gt=0)] = 1920
    max_height: Annotated[int, msgspec.Meta(gt=0)] = 1080


class SelectionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the proxy picks a worker (proxy/selection.py)."""

    probation_requests: int = 3  # answers a new worker gives before it is ranked by its measured latency
    probation_share: float = 0.1  # share of choices offered to workers on probation first
    bench_after_failures: int = 3  # failures in a row that take a worker out of rotation
    bench_s: float = 5.0  # the first bench; each further bench in a row doubles it
    bench_max_s: float = 300.0
    load_weight: float = 1.0  # how much slower a full worker answers than an idle one (1.0: twice)
    reference_tokens: int = 128  # answer length at which time to first token and token rate are weighed


class SpotCheckConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Re-execution of deterministic requests on another worker of the same model and image (proxy/spotcheck.py).
    What the checks cost (the checking workers' time) is the proxy's, never a client's."""

    share: float = 0.02  # of deterministic requests (temperature 0, or a seed) re-run; 0 turns checks off
    bench_after: int = 2  # failed checks (answers the referee disagreed with) that bench a worker
    bench_s: float = 3600.0  # that bench; each further failed check doubles it (a worker caught lying stays out)
    max_in_flight: int = 4  # checks running at once: a request sampled beyond them is not checked
    timeout_s: float = 120.0  # a re-execution not answered by then counts as not run, never as a mismatch
    evidence_kept: int = 16  # mismatch records kept per worker (in its reputation, saved with it)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"spot_checks.share must lie in 0..1, not {self.share}")
        if self.bench_after < 1 or self.max_in_flight < 1 or self.evidence_kept < 0:
            raise ValueError("spot_checks: bench_after and max_in_flight must be at least 1, evidence_kept >= 0")


class AdmissionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Connections an RA-TLS listener takes before they are authenticated (ratls/admission.py)."""

    max_handshakes: int = 512  # TLS handshakes in progress on the listener
    max_handshakes_per_address: int = 32  # of them from one source address (IPv6: one /64)
    max_links_per_address: int = 256  # established links from one source address
    handshake_timeout_s: float = 10.0  # a TLS handshake not finished by then is dropped

    def __post_init__(self) -> None:
        if min(self.max_handshakes, self.max_handshakes_per_address, self.max_links_per_address) < 1:
            raise ValueError("admission limits must be at least 1")
        if not self.handshake_timeout_s > 0:
            raise ValueError("handshake_timeout_s must be positive")


class CommonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    state_dir: str = ".cocoon"
    stats_host: str = "127.0.0.1"
    stats_port: int = 0  # 0: any free port (the chosen one is printed and written to localnet.json)
    # required when stats_host is not loopback: /jsonstats and /metrics then need `Authorization: Bearer <token>`
    stats_token: str | None = None
    attestation: str = "fake"  # tdx | fake | none
    image: str = "cocoon-dev"  # the fake backend derives its measurements from this name
    policy: str = "dev"  # built-in policy name (dev, tdx-any, production) or a policy file
    pccs_url: str = ""  # where TDX collateral comes from (cached in state_dir/collateral); empty: cache only
    cert_lifetime_s: int = 86400
    log_level: str = "INFO"
    # Pay and get paid on chain: `cocoon up` turns it on. Off, the proxy still keeps its books but extends unlimited
    # credit and signs no vouchers.
    payments: bool = False
    # HOST:PORT of a key service (`cocoon keys`): the node's RA-TLS, wallet and voucher keys then come from it over
    # RA-TLS, derived for its image, role and name, so they survive restarts and moves between machines. Needed by
    # `tdx` nodes that hold money; optional for `fake` (without it, the fake platform's local secret is used).
    key_service: str = ""
    # The chain (ledger/network.py). `network` names the global id the chain must have: a node started against a
    # chain with another refuses to start. `ton_api`: a toncenter-v2-compatible HTTP API (toncenter.com, a
    # self-hosted ton-http-api, `cocoon chain serve`), `ton_api_key` its key if it wants one; `root`: the cocoon
    # root contract there (the registry). Without `ton_api`, the in-process local chain in STATE_DIR/ledger.sqlite
    # (unit tests only). `liteservers` (a global config file) is not supported yet: it is refused with a reason.
    network: str = "devnet"  # devnet | testnet | mainnet
    ton_api: str = ""
    ton_api_key: str | None = None
    root: str = ""
    liteservers: str = ""
    registry_sync_s: float = 5.0  # how often the registry's version is re-read from the chain

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {self.network!r}")
        if self.ton_api and not self.root:
            raise ValueError("ton_api needs root: the address of the cocoon root contract on that chain")
        if not self.registry_sync_s > 0:
            raise ValueError("registry_sync_s must be positive")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


class ProxyConfig(CommonConfig, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 10100  # workers and clients dial this (RA-TLS)
    endpoint: str = ""  # where clients and workers dial this proxy, as registered in the root; "": host:port
    prices: Prices = Prices()  # the root's prices when this proxy creates the local chain (cocoon up sets them)
    # Settlement on chain (each operation's fees: src/cocoon/contracts/README.md, "Fees"). A client's charges are
    # claimed once they reach `claim_threshold_nanoton` or half its stake (a claim costs ~0.0066 TON); the books'
    # state is committed every `commit_interval_s` (~0.0018 TON each: 0.26 TON a day at 600 s).
    claim_threshold_nanoton: int = 1_000_000_000
    commit_interval_s: float = 600.0
    chain_poll_s: float = 5.0  # how often clients' channels are re-read (top-ups, withdrawals) and claims made
    default_max_tokens: int = 4096  # with payments, the output cap of a request that sets no max_tokens
    # What the proxy forwards (proxy/validation.py): a body a worker would take whole, a cap it would honour. The
    # same names and defaults as the client API's own limits; a peer that skips its client's checks meets these.
    max_body_bytes: int = 1024 * 1024
    max_media_seconds: float = 3600.0  # the most input a media job may declare (and be reserved for)
    max_tokens_limit: int = 4096  # a limit, not a cap: a request asking for more `max_tokens` gets 400
    # Timeouts, each answered with its own error code. Streamed requests wait `first_token_timeout_s` for a
    # worker's first token (then move to another worker) and `idle_timeout_s` between tokens; a non-streamed
    # answer arrives whole, within `whole_timeout_s` of being sent to a worker (or the request moves to another
    # one, as without a first token): a worker that never answers holds no slot longer. The total covers
    # queueing and retries, and the client's own deadline (its `request_timeout_s`) shortens it.
    first_token_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    whole_timeout_s: float = 300.0
    total_timeout_s: float = 600.0
    max_attempts: int = 3  # workers tried for one request before its first token reached the client
    # when every matching worker is busy, requests wait in a bounded queue, then get 503 + Retry-After
    queue_depth: int = 1024
    queue_timeout_s: float = 5.0
    # per paying party (the wallet behind a client's verified channel; with payments off, the link's RA-TLS key,
    # which a client mints freely), answered with 429 + Retry-After; 0 turns a limit off
    client_max_concurrent: int = 64
    client_tokens_per_minute: int = 0  # prompt + completion tokens, as charged
    reputation_keep_s: float = 86400.0  # how long a disconnected worker key's reputation is remembered
    selection: SelectionConfig = SelectionConfig()
    spot_checks: SpotCheckConfig = SpotCheckConfig()
    admission: AdmissionConfig = AdmissionConfig()  # per source address, before authentication
    # the Oblivious HTTP gateway's keys (proxy/gateway.py): a new one every `ohttp_rotate_s`, the one before
    # still accepted for `ohttp_overlap_s` (devices that fetched the configuration just before the rotation)
    ohttp_rotate_s: float = 3600.0
    ohttp_overlap_s: float = 300.0
    # how many workers' certificates a client asking to seal a request gets (picked at random among those serving
    # the model): the candidates it may seal to, among which retries move
    seal_candidates: Annotated[int, msgspec.Meta(ge=1, le=16)] = 8


class WorkerConfig(CommonConfig, kw_only=True, forbid_unknown_fields=True):
    proxy: str = "127.0.0.1:10100"
    proxies: list[str] = []  # more proxies, after `proxy`, to serve or fail over to
    # Find the proxies in the root registry instead (nearest first, re-read when it changes): `proxy`/`proxies`
    # are then not used.
    discover_proxies: bool = False
    max_proxies: Annotated[int, msgspec.Meta(ge=1)] = 1  # proxies served at once, each over its own link
    engine: str = "embedded"  # embedded | fake | openai:URL
    engine_options: dict[str, Any] = {}
    coefficient: int = 1000
    max_active_requests: int = 4
    region: str = "local"
    owner: str = ""  # payout wallet; with payments on, empty means the wallet in STATE_DIR/NAME.wallet
    redeem_threshold_nanoton: int = 1_000_000_000  # redeem once this much is earned (a redeem costs ~0.0069 TON)
    chain_poll_s: float = 30.0
    # what the worker serves: `llm` (its engine's models) and/or `media` (transcoding with PyAV, cocoon/media)
    workloads: list[Literal["llm", "media"]] = msgspec.field(default_factory=lambda: ["llm", "media"])
    media: MediaLimits = MediaLimits()

    @property
    def proxy_addresses(self) -> list[str]:
        return pinned_proxies(self.proxy, self.proxies)


class ClientConfig(CommonConfig, kw_only=True, forbid_unknown_fields=True):
    attestation: str = "none"  # clients run on ordinary servers
    proxy: str = "127.0.0.1:10100"
    proxies: list[str] = []  # more proxies to fail over to, tried in order after `proxy`
    # Find the proxies in the root registry instead (nearest first, re-read when it changes): `proxy`/`proxies`
    # are then not used.
    discover_proxies: bool = False
    connect_timeout_s: float = 5.0  # a request waits this long for a proxy link before it gets 503
    api_host: str = "127.0.0.1"
    api_port: int = 10000
    api_key: str | None = None  # required when api_host is not a loopback address
    max_body_bytes: int = 1024 * 1024
    max_tokens_limit: int = 4096  # a limit, not a cap: a request asking for more `max_tokens` gets 400
    max_prompt_chars: int = 200_000
    # media uploads (POST /v1/media/transcode): the largest file taken, and the most input seconds a job declares
    # when it sets no `duration` (what the proxy reserves money for)
    max_media_bytes: Annotated[int, msgspec.Meta(gt=0)] = 256 * 1024 * 1024
    max_media_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    # the dearest worker price coefficient (per-mille of the list price) this client's requests may be served at;
    # the proxy reserves each request's money at this coefficient (the registry allows up to its max_coefficient)
    default_max_coefficient: Annotated[int, msgspec.Meta(gt=0)] = 2000
    request_timeout_s: float = 600.0
    # Sealed end to end (cocoon/seal): each body is sealed to workers whose attestation this client verified itself,
    # so the proxy relays ciphertext only. `false` sends bodies in the clear to the proxy: for debugging only, and
    # said loudly at start. A request is sealed to up to `seal_candidates` workers, any of which the proxy may use.
    # Workers refuse a sealed request whose deadline lies more than an hour ahead (they remember each one opened
    # until its deadline, to refuse replays): keep `request_timeout_s` under 3600 with sealing on.
    seal_requests: bool = True
    seal_candidates: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4
    # the payment channel with each proxy (nanoTON): the first deposit and the stake in it, then automatic
    # top-ups to `top_up_to_nanoton` whenever less than `top_up_below_nanoton` is left for new requests
    deposit_nanoton: int = 10_000_000_000
    stake_nanoton: int = 5_000_000_000
    top_up_below_nanoton: int = 2_000_000_000
    top_up_to_nanoton: int = 10_000_000_000
    chain_poll_s: float = 5.0
    # Through an Oblivious HTTP relay (`cocoon relay`, e.g. a VPN provider's) instead of a proxy link: each request
    # is encapsulated to the proxy's gateway, whose attestation this client verifies; the relay pays. "": off
    via_relay: str = ""
    subscriber_token: str | None = None  # what the relay knows this user by (counted, never logged)

    @property
    def proxy_addresses(self) -> list[str]:
        return pinned_proxies(self.proxy, self.proxies)


class KeysConfig(CommonConfig, kw_only=True, forbid_unknown_fields=True):
    """The key service (`cocoon keys`, keys/): derives keys from its master secret for attested peers."""

    host: str = "127.0.0.1"
    port: int = 10200  # nodes dial this (RA-TLS)
    # HOST:PORT of another key service instance to copy the master secret from at the first start (it hands it
    # only to a key service running its own image): instances that share a master give every node the same keys.
    replicate_from: str = ""
    # hex X25519 public key of the operator's offline recovery key: when the master secret is created, a copy
    # encrypted to it is written to STATE_DIR/NAME.master-backup (README: "Recovering keys")
    recovery_public_key: str = ""


class RelayConfig(ClientConfig, kw_only=True, forbid_unknown_fields=True):
    """`cocoon relay`: an Oblivious HTTP relay (a VPN provider's) that pays as a client of record. `api_host` and
    `api_port` are where users' devices send `message/ohttp-req`; `proxy`, `proxies`, payments and the channel
    settings are its own, as a client's."""

    api_port: int = 10300
    # the bearer tokens subscribers send (`Authorization: Bearer <token>`); each is counted, never logged. Empty:
    # anyone who reaches the relay may use it (only allowed on a loopback address)
    subscriber_tokens: list[str] = []


def pinned_proxies(proxy: str, proxies: list[str]) -> list[str]:
    """The proxies a config pins, in its order: `proxy`, then `proxies` (without repeating it)."""
    return [proxy, *(p for p in proxies if p != proxy)]


C = TypeVar("C", bound=CommonConfig)


def load_config(path: str | Path, kind: type[C]) -> C:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for field in msgspec.structs.fields(kind):
        env = os.environ.get(f"COCOON_{field.name.upper()}")
        if env is not None:
            data[field.name] = env
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def dump_config(cfg: CommonConfig) -> str:
    """TOML text for a config (used by `cocoon up` to write each process's file)."""
    return _to_toml(msgspec.to_builtins(cfg))


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars, tables = [], []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(scalars) + "\n"
    for key, value in tables:
        name = f"{prefix}{key}"
        out += f"\n[{name}]\n" + _to_toml(value, prefix=f"{name}.")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()  # JSON string escaping is valid TOML basic-string syntax
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")
