"""The relay's prekey service: uploads, bundle claims, counts, device lists, low-pool pushes.

LIST_DEVICES answers each device's identity key with the account key and the latest signed
device list, so that a client addresses a device only if the list its pinned account key signed
names that device's key (PROTOCOL.md "Accounts, device lists and linking").

Each handler takes the authenticated device and its request and returns the encoded answer;
the session writes it on the request's stream. What the relay promises (docs/PROTOCOL.md
"Prekeys", and the prekey rows of the invariants table in docs/ARCHITECTURE.md): every
signature is verified against the device's stored identity key before anything is stored, and
an upload is stored whole or not at all; a one-time prekey is handed out at most once
(``PrekeyStore.claim_bundles``); fetches are rate-limited per requesting device, before the
target is looked up, so that made-up user ids cost as much as real ones and make no bucket of
their own, and then per requesting device and existing target, so no one can drain a user's
pools.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import structlog

from crypto.prekey_format import PrekeyKind, verify_prekey_signature
from relay.context import RelayContext
from relay.pair_keys import PairKeys
from relay.reachability import may_reach
from storage.base import (
    AccountKeyStore,
    Device,
    Directory,
    NotFound,
    OrganisationPolicy,
    OrganisationState,
    PrekeyStore,
    RateLimits,
    UserState,
)
from storage.prekey_records import ClaimedBundle, Prekey, PrekeyPoolFull, PrekeyUpload
from storage.prekey_records import PrekeyCounts as StoredCounts
from wire.codec import encode_frame
from wire.frames import (
    Error,
    ErrorCode,
)
from wire.prekey_frames import (
    Bundle,
    DeviceBundle,
    DeviceInfo,
    DeviceList,
    FetchBundle,
    GetPrekeyCounts,
    KemPrekey,
    ListDevices,
    OneTimePrekey,
    PrekeyCounts,
    PrekeyRequest,
    PrekeysLow,
    PrekeysUploaded,
    SignedPrekey,
    UploadPrekeys,
)

__all__ = [
    "BUNDLE_FETCHES_PER_DEVICE",
    "BUNDLE_FETCHES_PER_TARGET",
    "BUNDLE_FETCH_PERIOD_MS",
    "DEVICE_LISTINGS_PER_DEVICE",
    "MAX_ONE_TIME_PREKEYS_PER_DEVICE",
    "PREKEYS_LOW_THRESHOLD",
    "PrekeyService",
    "PrekeyServiceStore",
]

log = structlog.get_logger("relay.prekeys")

BUNDLE_FETCHES_PER_DEVICE = 200
"""Bundle fetches one device may make per period, whatever the targets: a client fetches once
per new contact and per new device of a contact. One bucket per requesting device, taken before
the target is looked up: a client that makes up user ids neither gets more fetches nor makes the
relay keep a bucket per id."""
BUNDLE_FETCHES_PER_TARGET = 20
"""Bundle fetches one device may make for one existing target user per period: a client fetches
when it starts a session or the target adds a device; more would only drain the target's
one-time pools. Taken only once the target is known to exist and be reachable."""
DEVICE_LISTINGS_PER_DEVICE = 1000
"""LIST_DEVICES one device may ask per hour, whatever the users: a client reads a contact's
signed list at first contact, after MISMATCHED_DEVICES and when a safety number is shown, and
its own at each connection; one bucket per requesting device, so made-up user ids cost the
same as real ones and leave no bucket behind."""
BUNDLE_FETCH_PERIOD_MS = 60 * 60 * 1000
"""The period over which BUNDLE_FETCHES_PER_DEVICE and BUNDLE_FETCHES_PER_TARGET refill (one
hour)."""
MAX_ONE_TIME_PREKEYS_PER_DEVICE = 1000
"""One-time keys of each kind the relay keeps per device: ten full uploads, ~1.6 MB of KEM keys;
a bound on what one device can make the relay store."""
PREKEYS_LOW_THRESHOLD = 10
"""Below this many one-time keys of a kind after a claim, the device is told to upload more."""


def _error(code: ErrorCode, reason: str) -> bytes:
    return encode_frame(Error(code=code, reason=reason))


def _rate_limited(what: str, capacity: int, requests: str = "bundle fetches") -> bytes:
    """RATE_LIMITED by an empty bucket of ``capacity`` requests an hour: it refills one
    within ``BUNDLE_FETCH_PERIOD_MS / capacity``, the wait the answer names."""
    wait_ms = -(-BUNDLE_FETCH_PERIOD_MS // capacity)
    return encode_frame(Error(
        code=ErrorCode.RATE_LIMITED, retry_after_ms=wait_ms,
        reason=f"too many {requests} {what} (at most {capacity} an hour); "
               f"retry after {-(-wait_ms // 1000)} s"))


def _counts_answer(answer: type[PrekeyCounts | PrekeysUploaded], counts: StoredCounts) -> bytes:
    return encode_frame(answer(one_time=counts.one_time, kem_one_time=counts.kem_one_time,
                               signed_prekey_id=counts.signed_prekey_id,
                               kem_last_resort_prekey_id=counts.kem_last_resort_prekey_id))


def _first_bad_signature(identity_key: bytes, frame: UploadPrekeys) -> str | None:
    """Name the first signed key whose signature does not verify, or None."""
    signed: list[tuple[PrekeyKind, SignedPrekey | KemPrekey]] = []
    if frame.signed_prekey is not None:
        signed.append((PrekeyKind.SIGNED, frame.signed_prekey))
    if frame.kem_last_resort_prekey is not None:
        signed.append((PrekeyKind.KEM_LAST_RESORT, frame.kem_last_resort_prekey))
    signed.extend((PrekeyKind.KEM_ONE_TIME, key) for key in frame.kem_one_time_prekeys)
    for kind, key in signed:
        if not verify_prekey_signature(identity_key, kind, key.key_id, key.public_key,
                                       key.signature):
            return f"the {kind.value} prekey {key.key_id}"
    return None


def _stored(key: SignedPrekey | KemPrekey | OneTimePrekey) -> Prekey:
    return Prekey(key_id=key.key_id, public_key=key.public_key,
                  signature=None if isinstance(key, OneTimePrekey) else key.signature)


def _device_bundle(claimed: ClaimedBundle) -> DeviceBundle:
    def signed(key: Prekey | None) -> SignedPrekey | None:
        if key is None or key.signature is None:
            return None
        return SignedPrekey(key_id=key.key_id, public_key=key.public_key,
                            signature=key.signature)

    def kem(key: Prekey | None) -> KemPrekey | None:
        if key is None or key.signature is None:
            return None
        return KemPrekey(key_id=key.key_id, public_key=key.public_key, signature=key.signature)

    one_time = claimed.one_time_prekey
    return DeviceBundle(
        device_id=claimed.device.device_id, identity_key=claimed.device.identity_key,
        signed_prekey=signed(claimed.signed_prekey),
        one_time_prekey=None if one_time is None else OneTimePrekey(
            key_id=one_time.key_id, public_key=one_time.public_key),
        kem_prekey=kem(claimed.kem_prekey), kem_one_time=claimed.kem_one_time)


def _ran_low(claimed: ClaimedBundle) -> bool:
    """A pool this claim took from is now below the threshold."""
    took_one_time = claimed.one_time_prekey is not None
    took_kem = claimed.kem_one_time
    return ((took_one_time and claimed.remaining.one_time < PREKEYS_LOW_THRESHOLD)
            or (took_kem and claimed.remaining.kem_one_time < PREKEYS_LOW_THRESHOLD))


class PrekeyServiceStore(PrekeyStore, Directory, OrganisationPolicy, RateLimits, AccountKeyStore,
                         Protocol):
    """What the prekey service reads and writes: the prekeys, the devices they belong to, the
    cross-organisation policy, the fetch rate limit, and the account key and signed device
    list that LIST_DEVICES serves with the devices."""


class PrekeyService:
    """One per relay; its rate limit lives in the store (shared by a cluster's nodes)."""

    def __init__(self, relay: RelayContext, store: PrekeyServiceStore | None = None) -> None:
        """``store`` defaults to the relay's (``relay.store``); the service uses no more of it
        than ``PrekeyServiceStore`` names."""
        self._relay = relay
        self._store: PrekeyServiceStore = relay.store if store is None else store
        self._pairs = PairKeys()
        """Names the per-target buckets without naming requester and target (relay/pair_keys.py)."""

    async def handle(self, device: tuple[str, int], frame: PrekeyRequest) -> bytes:
        """Answer one prekey request of the authenticated ``device``."""
        if isinstance(frame, UploadPrekeys):
            return await self._upload(device, frame)
        if isinstance(frame, FetchBundle):
            return await self._fetch_bundle(device, frame)
        if isinstance(frame, GetPrekeyCounts):
            return await self._counts(device)
        return await self._list_devices(device, frame)

    async def _upload(self, device: tuple[str, int], frame: UploadPrekeys) -> bytes:
        store = self._store
        principal = await store.load_principal(*device)
        if principal is None:
            return _error(ErrorCode.DEVICE_REVOKED, "this device was revoked")
        bad = _first_bad_signature(principal.device.identity_key, frame)
        if bad is not None:
            log.info("prekey_upload_refused", reason="bad_signature")
            return _error(ErrorCode.INVALID_PREKEY_SIGNATURE,
                          f"the signature of {bad} does not verify with this device's "
                          "identity key; nothing was stored")
        upload = PrekeyUpload(
            signed_prekey=None if frame.signed_prekey is None else _stored(frame.signed_prekey),
            kem_last_resort_prekey=None if frame.kem_last_resort_prekey is None
            else _stored(frame.kem_last_resort_prekey),
            one_time_prekeys=tuple(map(_stored, frame.one_time_prekeys)),
            kem_one_time_prekeys=tuple(map(_stored, frame.kem_one_time_prekeys)))
        try:
            counts = await store.store_prekeys(
                user_id=device[0], device_id=device[1], upload=upload, now=self._relay.now_ms(),
                max_pool_size=MAX_ONE_TIME_PREKEYS_PER_DEVICE)
        except PrekeyPoolFull as error:
            return _error(ErrorCode.PREKEY_POOL_FULL, f"{error}; nothing was stored")
        except NotFound:
            return _error(ErrorCode.DEVICE_REVOKED, "this device was revoked")
        log.info("prekeys_uploaded", one_time=counts.one_time, kem_one_time=counts.kem_one_time)
        return _counts_answer(PrekeysUploaded, counts)

    async def _counts(self, device: tuple[str, int]) -> bytes:
        try:
            counts = await self._store.prekey_counts(user_id=device[0], device_id=device[1])
        except NotFound:
            return _error(ErrorCode.DEVICE_REVOKED, "this device was revoked")
        return _counts_answer(PrekeyCounts, counts)

    async def _reachable_devices(self, user_id: str,
                                 requester: tuple[str, int]) -> list[Device] | None:
        """The user's current devices, or None if the requester cannot reach the user (as
        LOOKUP: only enrolled users of active organisations the policy lets it reach)."""
        store = self._store
        devices = await store.list_devices(user_id)
        if not devices:
            return None
        principal = await store.load_principal(user_id, devices[0].device_id)
        if (principal is None or principal.user.state is not UserState.ENROLLED
                or principal.organisation.state is not OrganisationState.ACTIVE):
            return None
        session = self._relay.sessions.get(requester)
        if not await may_reach(store, to_organisation_id=principal.organisation.organisation_id,
                               from_organisation_id=None if session is None
                               else session.organisation_id):
            return None
        return devices

    async def _fetch_bundle(self, requester: tuple[str, int], frame: FetchBundle) -> bytes:
        relay, store = self._relay, self._store
        if not await store.take_tokens(
                key=f"bundle-device {requester[0]} {requester[1]}", cost=1,
                capacity=BUNDLE_FETCHES_PER_DEVICE, period_ms=BUNDLE_FETCH_PERIOD_MS,
                now=relay.now_ms()):
            relay.metrics.rate_limited += 1
            return _rate_limited("from this device", BUNDLE_FETCHES_PER_DEVICE)
        devices = await self._reachable_devices(frame.user_id, requester)
        if devices is None:
            return _error(ErrorCode.UNKNOWN_RECIPIENT, "no such user, or not reachable")
        # Only now, for a target that exists: at most one new bucket per fetch granted above.
        # Keyed by an HMAC of the pair, never by both ids: no rate-limit row links two users.
        now = relay.now_ms()
        if not await store.take_tokens(
                key=self._pairs.key("bundle-pair", requester[0], str(requester[1]),
                                    frame.user_id, now=now), cost=1,
                capacity=BUNDLE_FETCHES_PER_TARGET, period_ms=BUNDLE_FETCH_PERIOD_MS,
                now=now):
            relay.metrics.rate_limited += 1
            return _rate_limited("for this user", BUNDLE_FETCHES_PER_TARGET)
        wanted = {device.device_id for device in devices}
        if frame.device_ids:
            wanted &= set(frame.device_ids)
        if frame.user_id == requester[0]:
            wanted.discard(requester[1])  # one's own device needs no session with itself
        claimed = await self._store.claim_bundles(user_id=frame.user_id,
                                                  device_ids=sorted(wanted))
        self._warn_low(frame.user_id, (bundle for bundle in claimed if _ran_low(bundle)))
        return encode_frame(Bundle(user_id=frame.user_id,
                                   bundles=tuple(map(_device_bundle, claimed))))

    def _warn_low(self, user_id: str, low: Iterable[ClaimedBundle]) -> None:
        """Tell each device whose pool ran low: here if it is connected to this node,
        through its node otherwise (cluster)."""
        elsewhere = []
        for claimed in low:
            session = self._relay.sessions.get((user_id, claimed.device.device_id))
            if session is not None:
                session.push(encode_frame(PrekeysLow(
                    one_time=claimed.remaining.one_time,
                    kem_one_time=claimed.remaining.kem_one_time)))
            else:
                elsewhere.append(claimed.device.device_id)
        if elsewhere and self._relay.cluster is not None:
            self._relay.cluster.tell_prekeys_low(user_id, elsewhere)

    async def _list_devices(self, requester: tuple[str, int], frame: ListDevices) -> bytes:
        relay = self._relay
        if not await self._store.take_tokens(
                key=f"list-devices {requester[0]} {requester[1]}", cost=1,
                capacity=DEVICE_LISTINGS_PER_DEVICE, period_ms=BUNDLE_FETCH_PERIOD_MS,
                now=relay.now_ms()):
            relay.metrics.rate_limited += 1
            return _rate_limited("from this device", DEVICE_LISTINGS_PER_DEVICE,
                                 "device-list requests")
        user_id = requester[0] if frame.user_id is None else frame.user_id
        devices = await self._reachable_devices(user_id, requester)
        if devices is None:
            if user_id == requester[0]:
                return _error(ErrorCode.DEVICE_REVOKED, "this device was revoked")
            return _error(ErrorCode.UNKNOWN_RECIPIENT, "no such user, or not reachable")
        account = await self._store.account(user_id)
        return encode_frame(DeviceList(
            user_id=user_id,
            devices=tuple(DeviceInfo(device_id=device.device_id,
                                     registered_at=device.registered_at,
                                     identity_key=device.identity_key) for device in devices),
            account_key=None if account is None else account.account_key,
            signed_list=None if account is None else account.device_list))
