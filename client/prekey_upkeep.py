"""Keeping a device's prekeys published: conversions between `crypto` and the wire frames,
and the refill rule.

A device publishes its signed prekey, its last-resort ML-KEM prekey and pools of one-time
keys (PROTOCOL.md "Prekeys"). It refills a pool when the relay says it runs low (the
PREKEYS_LOW push) or when GET_PREKEY_COUNTS, asked after every authentication, shows fewer
than `REFILL_BELOW` keys. At the same moments it rotates the signed and last-resort prekeys
when they are due (`DeviceCrypto.rotate_due_prekeys`, docs/CRYPTO.md) and publishes the new
ones.
"""

from __future__ import annotations

from collections.abc import Callable

from client.connection import RelayClient
from crypto.device import DeviceCrypto
from crypto.prekeys import OneTimePrekey as CryptoOneTimePrekey
from crypto.prekeys import PrekeyBundle
from crypto.prekeys import SignedPrekey as CryptoSignedPrekey
from wire.prekey_frames import (
    DeviceBundle,
    KemPrekey,
    OneTimePrekey,
    PrekeyCounts,
    SignedPrekey,
)

__all__ = ["POOL_TARGET", "REFILL_BELOW", "MissingPrekeysError", "bundle_from_wire",
           "publish_prekeys"]

POOL_TARGET = 100
"""One-time keys of each kind a device keeps published: one upload's worth
(MAX_PREKEYS_PER_UPLOAD), enough for 100 new sessions while the device is offline."""
REFILL_BELOW = 50
"""Refill a pool found under this many keys when connecting: half the target, so a device
that connects now and then tops up before the relay's PREKEYS_LOW (10) would fire."""


class MissingPrekeysError(Exception):
    """A device of the contact has not published its prekeys yet (it has just enrolled)."""


def bundle_from_wire(bundle: DeviceBundle) -> PrekeyBundle:
    """The crypto form of a fetched bundle (signatures are checked by `start_session`).

    Raises:
        MissingPrekeysError: the device never uploaded its signed or KEM prekey.
    """
    if bundle.signed_prekey is None or bundle.kem_prekey is None:
        raise MissingPrekeysError(f"device {bundle.device_id} has not published its prekeys yet")
    one_time = bundle.one_time_prekey
    return PrekeyBundle(
        identity_key=bundle.identity_key,
        signed_prekey=CryptoSignedPrekey(key_id=bundle.signed_prekey.key_id,
                                         public_key=bundle.signed_prekey.public_key,
                                         signature=bundle.signed_prekey.signature),
        kem_prekey=CryptoSignedPrekey(key_id=bundle.kem_prekey.key_id,
                                      public_key=bundle.kem_prekey.public_key,
                                      signature=bundle.kem_prekey.signature),
        one_time_prekey=None if one_time is None else CryptoOneTimePrekey(
            key_id=one_time.key_id, public_key=one_time.public_key))


def _signed(prekey: CryptoSignedPrekey) -> SignedPrekey:
    return SignedPrekey(key_id=prekey.key_id, public_key=prekey.public_key,
                        signature=prekey.signature)


def _kem(prekey: CryptoSignedPrekey) -> KemPrekey:
    return KemPrekey(key_id=prekey.key_id, public_key=prekey.public_key,
                     signature=prekey.signature)


async def publish_prekeys(client: RelayClient, device: DeviceCrypto, counts: PrekeyCounts,
                          save: Callable[[], None], *, now_ms: int,
                          refill_below: int = REFILL_BELOW) -> bool:
    """Rotate the reusable prekeys if due at ``now_ms``, then upload what the relay lacks
    given ``counts``; return True if anything was uploaded.

    ``save`` is called after new secrets are generated and before their public halves
    leave, so a crash never leaves published keys whose secrets were lost.
    """
    rotated = device.rotate_due_prekeys(now_ms)
    signed = device.signed_prekey()
    last_resort = device.kem_last_resort_prekey()
    one_time_wanted = POOL_TARGET - counts.one_time if counts.one_time < refill_below else 0
    kem_wanted = POOL_TARGET - counts.kem_one_time if counts.kem_one_time < refill_below else 0
    one_time = device.generate_one_time_prekeys(one_time_wanted) if one_time_wanted > 0 else []
    kem_one_time = (device.generate_kem_one_time_prekeys(kem_wanted) if kem_wanted > 0 else [])
    send_signed = counts.signed_prekey_id != signed.key_id
    send_last_resort = counts.kem_last_resort_prekey_id != last_resort.key_id
    if not (one_time or kem_one_time or send_signed or send_last_resort):
        if rotated:
            save()  # retired keys were deleted
        return False
    save()
    await client.upload_prekeys(
        signed_prekey=_signed(signed) if send_signed else None,
        kem_last_resort_prekey=_kem(last_resort) if send_last_resort else None,
        one_time_prekeys=[OneTimePrekey(key_id=key.key_id, public_key=key.public_key)
                          for key in one_time],
        kem_one_time_prekeys=[_kem(key) for key in kem_one_time])
    return True
