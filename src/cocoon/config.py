"""Settings, one model per role: a TOML file, then `COCOON_<FIELD>` environment overrides."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec


class ConfigError(ValueError):
    pass


class Prices(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """nanoTON per token; multipliers in per-mille of the base price (DESIGN §3)."""

    price_per_token: int = 20
    worker_fee_per_token: int = 16
    prompt_multiplier: int = 1000
    cached_multiplier: int = 100
    completion_multiplier: int = 4000
    reasoning_multiplier: int = 4000


class CommonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    state_dir: str = ".cocoon"
    stats_host: str = "127.0.0.1"
    stats_port: int = 0  # 0: any free port (the chosen one is printed and written to localnet.json)
    attestation: str = "fake"  # tdx | fake | none
    image: str = "cocoon-dev"  # the fake backend derives its measurements from this name
    policy: str = "dev"  # built-in policy name or a policy file
    cert_lifetime_s: int = 86400
    log_level: str = "INFO"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


class ProxyConfig(CommonConfig, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 10100  # workers and clients dial this (RA-TLS)
    prices: Prices = Prices()
    ledger: str = "local"
    # a request waits this long for its first answer byte from a worker before it fails
    first_byte_timeout_s: float = 120.0


class WorkerConfig(CommonConfig, kw_only=True, forbid_unknown_fields=True):
    proxy: str = "127.0.0.1:10100"
    engine: str = "embedded"  # embedded | fake | openai:URL
    engine_options: dict[str, Any] = {}
    coefficient: int = 1000
    max_active_requests: int = 4
    region: str = "local"
    owner: str = ""


class ClientConfig(CommonConfig, kw_only=True, forbid_unknown_fields=True):
    attestation: str = "none"  # clients run on ordinary servers
    proxy: str = "127.0.0.1:10100"
    api_host: str = "127.0.0.1"
    api_port: int = 10000
    api_key: str | None = None  # required when api_host is not a loopback address
    max_body_bytes: int = 1024 * 1024
    max_tokens_limit: int = 4096
    max_prompt_chars: int = 200_000
    default_max_coefficient: int | None = None
    request_timeout_s: float = 600.0


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
