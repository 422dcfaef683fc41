"""The push providers a relay's settings configure (docs/PUSH.md).

``outbox`` is always there (development; it contacts nothing). ``webpush`` is on when
``push_webpush_subject`` is set, ``fcm`` when ``push_fcm_credentials_file`` is, ``apns`` when
``push_apns_key_file`` is. A device registering a target for a provider that is not on is
refused (PUSH_PROVIDER_UNAVAILABLE). Credentials are read here, once, and never logged:
a problem names the setting and the file, not what is in it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.push_apns import ApnsProvider, load_apns_key
from relay.push_fcm import FcmProvider, load_fcm_credentials
from relay.push_http import PushConfigError
from relay.push_outbox import OUTBOX_FILE_NAME, OutboxProvider
from relay.push_providers import PushProvider
from relay.push_webpush import WebPushProvider
from relay.settings import RelaySettings, allowed_push_hosts

__all__ = ["VAPID_KEY_FILE_NAME", "PushConfigError", "build_providers", "close_providers",
           "load_or_create_vapid_key"]

VAPID_KEY_FILE_NAME = "push-vapid.pem"
VAPID_KEY_FILE_MODE = 0o600
MAX_KEY_FILE_BYTES = 16 * 1024


def load_or_create_vapid_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The VAPID key in ``path`` (PEM, P-256), created (0600) if the file does not exist.

    Raises:
        PushConfigError: the file exists but is not a P-256 private key.
    """
    where = f"push_webpush_vapid_key_file {path}"
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        return _create_vapid_key(path)
    except OSError as error:
        raise PushConfigError(f"{where}: cannot read it: {error.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PushConfigError(f"{where}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PushConfigError(f"{where}: not a P-256 key (VAPID signs with ES256)")
    return key


def _create_vapid_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    # O_EXCL: two nodes starting at once never overwrite each other's key.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                             | os.O_NOFOLLOW, VAPID_KEY_FILE_MODE)
    except FileExistsError:
        return load_or_create_vapid_key(path)
    except OSError as error:
        raise PushConfigError(f"push_webpush_vapid_key_file {path}: cannot create it: "
                              f"{error.strerror}") from None
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return key


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as error:
        raise PushConfigError(f"push_apns_ca_file {ca_file}: not a readable PEM certificate "
                              f"file ({error})") from None


def build_providers(settings: RelaySettings, data_dir: Path) -> dict[str, PushProvider]:
    """The configured providers by name; ``outbox`` always.

    Raises:
        PushConfigError: a configured provider's key or credentials cannot be used.
    """
    timeout_s, ttl_s = settings.push_timeout_s, settings.push_ttl_s
    providers: dict[str, PushProvider] = {
        "outbox": OutboxProvider(data_dir / OUTBOX_FILE_NAME)}
    if settings.push_webpush_subject is not None:
        key_file = settings.push_webpush_vapid_key_file or data_dir / VAPID_KEY_FILE_NAME
        providers["webpush"] = WebPushProvider(
            vapid_key=load_or_create_vapid_key(key_file), subject=settings.push_webpush_subject,
            allowed_hosts=allowed_push_hosts(settings.push_webpush_allowed_hosts),
            allow_loopback_http=settings.push_webpush_allow_loopback_http,
            timeout_s=timeout_s, ttl_s=ttl_s)
    if settings.push_fcm_credentials_file is not None:
        providers["fcm"] = FcmProvider(
            credentials=load_fcm_credentials(settings.push_fcm_credentials_file),
            base_url=settings.push_fcm_base_url, timeout_s=timeout_s, ttl_s=ttl_s)
    if settings.push_apns_key_file is not None:
        if not (settings.push_apns_key_id and settings.push_apns_team_id
                and settings.push_apns_topic):
            raise PushConfigError("push_apns_key_file needs push_apns_key_id, "
                                  "push_apns_team_id and push_apns_topic")
        providers["apns"] = ApnsProvider(
            key=load_apns_key(settings.push_apns_key_file), key_id=settings.push_apns_key_id,
            team_id=settings.push_apns_team_id, topic=settings.push_apns_topic,
            host=settings.push_apns_host, timeout_s=timeout_s, ttl_s=ttl_s,
            verify=_verify(settings.push_apns_ca_file))
    return providers


async def close_providers(providers: dict[str, PushProvider]) -> None:
    """Release every provider's connections (each has ``aclose``; the interface does not
    require it, so a provider without one is skipped)."""
    for provider in providers.values():
        closer = getattr(provider, "aclose", None)
        if closer is not None:
            await closer()
