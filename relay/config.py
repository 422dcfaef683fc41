"""Relay configuration: a TOML file, ``CRYPTOPASS_*`` environment variables, flags.

Every field of ``RelaySettings`` is configurable the same way, with no code per
field, so that a field added to the dataclass later is covered at once:

* TOML file: the key is the field name (``listen_port = 4433``);
* environment: ``CRYPTOPASS_<FIELD NAME IN CAPITALS>`` (``CRYPTOPASS_LISTEN_PORT=4433``);
* flags: the ones ``serve`` names, or ``--set FIELD=VALUE`` for any field.

Flags override the environment, which overrides the file, which overrides the
defaults. Each value is converted to the field's declared type and checked;
an error names the setting and where the bad value came from, and nothing
starts. ``masked()`` hides secrets (tokens, passwords, a URL's password) for
``config show``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from relay.settings import (
    MAX_COMMIT_GATHER_US,
    MAX_WORKERS,
    RelaySettings,
    allowed_push_hosts,
)
from transport.addresses import parse_host_port

__all__ = [
    "CONFIG_FILE_VARIABLE",
    "ENV_PREFIX",
    "MASK",
    "ConfigError",
    "LoadedConfig",
    "environment_variable",
    "load_config",
    "masked",
    "parse_assignment",
]

ENV_PREFIX = "CRYPTOPASS_"
CONFIG_FILE_VARIABLE = "CRYPTOPASS_CONFIG"
"""Names the TOML file when ``--config`` is not given."""
MASK = "********"
MAX_CONFIG_FILE_BYTES = 1024 * 1024
"""A configuration file is a few hundred bytes; a larger one is a mistake."""

_SECRET_NAME = re.compile(r"token|password|secret|passphrase", re.IGNORECASE)
_LIBPQ_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_HOST_PORT_FIELDS = frozenset({"metrics_listen", "admin_listen", "call_address"})
_PORT_FIELDS = frozenset({"listen_port"})
_MAY_BE_ZERO = frozenset({"commit_gather_us"})
"""Numbers where 0 means "off" rather than nonsense."""
_MAX_PORT = 65535


class ConfigError(ValueError):
    """A setting is unknown, malformed or inconsistent; the message names it and its source."""


@dataclass(frozen=True)
class LoadedConfig:
    settings: RelaySettings
    sources: dict[str, str]
    """Field name -> where its value came from: "default", "file F", "CRYPTOPASS_X" or "flag"."""
    warnings: list[str] = field(default_factory=list)
    """Things worth telling the operator that do not stop the relay."""


def environment_variable(name: str) -> str:
    """The environment variable of setting ``name``."""
    return ENV_PREFIX + name.upper()


def parse_assignment(text: str) -> tuple[str, str]:
    """Split a ``--set FIELD=VALUE`` argument."""
    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise ConfigError(f"--set expects FIELD=VALUE, got {text!r}")
    return name.strip(), value


def load_config(*, config_file: Path | None = None, environ: Mapping[str, str],
                flags: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Merge defaults, file, environment and flags into validated ``RelaySettings``.

    Args:
        config_file: TOML file; if None, the file named by ``CRYPTOPASS_CONFIG`` (if set).
        environ: the process environment (passed in, so tests need not touch os.environ).
        flags: field name -> value from the command line; strings are converted
            like environment values, other values must already have the field's type.

    Raises:
        ConfigError: naming the setting and its source.
    """
    hints = typing.get_type_hints(RelaySettings)
    names = [f.name for f in dataclasses.fields(RelaySettings)]
    values: dict[str, Any] = {}
    sources = dict.fromkeys(names, "default")
    warnings: list[str] = []

    if config_file is None and environ.get(CONFIG_FILE_VARIABLE):
        config_file = Path(environ[CONFIG_FILE_VARIABLE])
    if config_file is not None:
        source = f"file {config_file}"
        for name, raw in _read_toml(config_file).items():
            if name not in hints:
                raise ConfigError(f"unknown setting {name!r} (from {source}); "
                                  f"known: {', '.join(names)}")
            values[name] = _convert(name, hints[name], raw, source, from_text=False)
            sources[name] = source

    known_variables = {environment_variable(name): name for name in names}
    for variable, raw in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_FILE_VARIABLE:
            continue
        if variable not in known_variables:
            # Not an error: other tools (tests, the client) use the prefix too.
            warnings.append(f"environment variable {variable} names no relay setting; ignored")
            continue
        name = known_variables[variable]
        values[name] = _convert(name, hints[name], raw, variable, from_text=True)
        sources[name] = variable

    for name, raw in (flags or {}).items():
        if name not in hints:
            raise ConfigError(f"unknown setting {name!r} (from a flag); "
                              f"known: {', '.join(names)}")
        values[name] = _convert(name, hints[name], raw, "flag", from_text=isinstance(raw, str))
        sources[name] = "flag"

    settings = RelaySettings(**values)
    _check(settings, sources)
    return LoadedConfig(settings=settings, sources=sources, warnings=warnings)


def masked(settings: RelaySettings) -> dict[str, Any]:
    """Every setting as a plain value (paths as text), secrets replaced by ``MASK``."""
    shown: dict[str, Any] = {}
    for name, value in dataclasses.asdict(settings).items():
        text = str(value) if isinstance(value, Path) else value
        # A path names where a secret is (enrolment_secret_file), never the secret itself.
        if text is not None and _SECRET_NAME.search(name) and not isinstance(value, Path):
            shown[name] = MASK
        elif isinstance(text, str):
            shown[name] = _mask_text(text)
        else:
            shown[name] = text
    return shown


def _mask_text(text: str) -> str:
    """Hide the password of a URL (``postgresql://user:pw@host/db``) or a libpq string."""
    text = _LIBPQ_PASSWORD.sub(lambda match: match.group(1) + MASK, text)
    if "://" not in text:
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.password is None:
        return text
    user_info, _, host = parts.netloc.rpartition("@")
    user = user_info.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: "
                          f"{error.strerror or error}") from None
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"configuration file {path} is larger than "
                          f"{MAX_CONFIG_FILE_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from None


def _convert(name: str, hint: Any, raw: Any, source: str, *, from_text: bool) -> Any:
    """``raw`` as a value of type ``hint``, or ConfigError naming setting and source."""
    try:
        return _coerce(hint, raw, from_text=from_text)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"setting {name} (from {source}): {error}") from None


def _coerce(hint: Any, raw: Any, *, from_text: bool) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        if raw is None or (from_text and raw == ""):
            if len(members) < len(typing.get_args(hint)):
                return None
            raise ValueError("a value is required")
        if len(members) != 1:
            raise TypeError(f"unsupported setting type {hint!r}")
        return _coerce(members[0], raw, from_text=from_text)
    if origin is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {raw!r}")
        return raw
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if from_text and str(raw).strip().lower() in _TRUE | _FALSE:
            return str(raw).strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_text and isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            return int(raw)
        raise ValueError(f"expected an integer, got {raw!r}")
    if hint is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if from_text and isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {raw!r}")
    if hint is str:
        if isinstance(raw, str):
            return raw
        raise ValueError(f"expected text, got {raw!r}")
    if hint is Path:
        if isinstance(raw, str | Path) and str(raw):
            return Path(raw)
        raise ValueError(f"expected a path, got {raw!r}")
    raise TypeError(f"unsupported setting type {hint!r}")


def _check(settings: RelaySettings, sources: Mapping[str, str]) -> None:
    """Rules beyond types: ranges and settings that go together."""

    def fail(name: str, problem: str) -> None:
        raise ConfigError(f"setting {name} (from {sources[name]}): {problem}")

    for name, value in dataclasses.asdict(settings).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Every number here is a size, count, duration or port: none is negative,
            # and only a port may be 0 ("any free port").
            if value < 0 or (value == 0 and name not in _PORT_FIELDS | _MAY_BE_ZERO):
                fail(name, f"must be positive, got {value}")
            if name in _PORT_FIELDS and value > _MAX_PORT:
                fail(name, f"port {value} is out of range 0-{_MAX_PORT}")
        if name in _HOST_PORT_FIELDS and value is not None:
            try:
                parse_host_port(value)
            except ValueError as error:
                fail(name, str(error))
    if (settings.cert is None) != (settings.key is None):
        fail("cert" if settings.cert is None else "key", "cert and key go together")
    if settings.sms_gateway == "http":
        for name in ("sms_http_url", "sms_http_token"):
            if getattr(settings, name) is None:
                fail(name, "required when sms_gateway is http")
    if settings.commit_gather_us > MAX_COMMIT_GATHER_US:
        fail("commit_gather_us", f"at most {MAX_COMMIT_GATHER_US}, got {settings.commit_gather_us}")
    _check_workers(settings, fail)
    _check_push(settings, fail)


_HOST_SUFFIX = re.compile(r"(?=.{1,253}$)([a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}")


def _check_push(settings: RelaySettings, fail: Callable[[str, str], None]) -> None:
    """The push providers' settings (docs/PUSH.md): each provider's go together."""
    subject = settings.push_webpush_subject
    if subject is not None and not subject.startswith(("mailto:", "https://")):
        fail("push_webpush_subject", f"a mailto: or https:// contact, got {subject!r}")
    for host in allowed_push_hosts(settings.push_webpush_allowed_hosts):
        if not _HOST_SUFFIX.fullmatch(host):
            fail("push_webpush_allowed_hosts", f"{host!r} is not a host name")
    for name in ("push_fcm_base_url", "push_apns_host"):
        url = urllib.parse.urlsplit(getattr(settings, name))
        if url.scheme not in ("https", "http") or not url.hostname:
            fail(name, f"expected an https:// URL, got {getattr(settings, name)!r}")
    if settings.push_apns_key_file is not None:
        for name in ("push_apns_key_id", "push_apns_team_id", "push_apns_topic"):
            if not getattr(settings, name):
                fail(name, "required when push_apns_key_file is set")


def _check_workers(settings: RelaySettings, fail: Callable[[str, str], None]) -> None:
    if settings.workers > MAX_WORKERS:
        fail("workers", f"at most {MAX_WORKERS}, got {settings.workers}")
    if settings.workers == 1:
        return
    if settings.store is None or settings.store.startswith("sqlite:"):
        fail("workers", "more than 1 needs a PostgreSQL store (store = postgresql://...): "
                        "each worker process is a cluster node, and presence and wake-ups "
                        "between processes go through PostgreSQL (LISTEN/NOTIFY), which the "
                        "embedded SQLite store does not have")
    if settings.metrics_listen is not None:
        _, port = parse_host_port(settings.metrics_listen)
        if port != 0 and port + settings.workers - 1 > _MAX_PORT:
            fail("metrics_listen", f"worker k listens on port {port} + k, beyond {_MAX_PORT} "
                                   f"with {settings.workers} workers")
