"""The store's whole contract, ``Store``, composed of the small protocols in
``storage.interfaces``, each stating its rules on its methods.

Backends never read the clock or the random source: callers pass ``now`` (milliseconds since
the Unix epoch, UTC) and any random material in. Phone numbers are E.164 strings already
validated by the caller; ``phone_key`` values are keyed hashes of phone numbers (see
``enrolment.codes``), so that numbers which were never declared are not kept in clear.

A caller that needs one capability asks for its protocol only (the delivery pump an
``EnvelopeQueue``, the prekey service a ``PrekeyStore``, ...); ``Store`` is for what opens and
owns a store. Backends must pass ``tests/storage_conformance.py`` (and the prekey and admin
conformance suites). The values and errors named here are defined in ``storage.records``,
``storage.account_records``, ``storage.prekey_records`` and ``storage.admin_records``; the
protocols and the values of ``storage.records`` and ``storage.account_records`` are re-exported
here, so that callers may import the contract from one place.
"""

from __future__ import annotations

from typing import Protocol

from storage.account_records import (
    REVOCATION_NOTICE_RETENTION_MS,
    AccountRecord,
    DeviceListRefusal,
    DeviceListRefused,
    LinkPostResult,
    PublishedDeviceList,
    Registration,
    RevokedDevice,
)
from storage.interfaces.accounts import AccountKeyStore, LinkChannelStore
from storage.interfaces.activity import DeviceActivity
from storage.interfaces.administration import AccountStore, AdminStore, AuditLog
from storage.interfaces.blobs import BlobStore
from storage.interfaces.cluster import ClusterCapable, ClusterWakeups
from storage.interfaces.directory import Directory, OrganisationPolicy
from storage.interfaces.enrolment import EnrolmentStore
from storage.interfaces.envelope_queue import EnvelopeQueue
from storage.interfaces.fanout import FanOutQueue
from storage.interfaces.lifecycle import StoreLifecycle
from storage.interfaces.pending import PendingResult
from storage.interfaces.prekeys import PrekeyStore
from storage.interfaces.push import PushTargetStore, WakeupQueue
from storage.interfaces.rate_limits import RateLimits
from storage.interfaces.sealed import DeliveryAccessStore
from storage.records import (
    AlreadyExists,
    BlobInfo,
    BlobOffsetMismatch,
    BlobPastSize,
    BlobQuotaExceeded,
    Device,
    Envelope,
    NewSend,
    NotFound,
    Organisation,
    OrganisationState,
    Principal,
    RegistrationRefusal,
    RegistrationRefused,
    SeatLimitReached,
    SendOutcome,
    SendStatus,
    StoreError,
    User,
    UserState,
)

__all__ = [
    "REVOCATION_NOTICE_RETENTION_MS",
    "AccountKeyStore",
    "AccountRecord",
    "AccountStore",
    "AdminStore",
    "AlreadyExists",
    "AuditLog",
    "BlobInfo",
    "BlobOffsetMismatch",
    "BlobPastSize",
    "BlobQuotaExceeded",
    "BlobStore",
    "ClusterCapable",
    "ClusterWakeups",
    "Device",
    "DeviceActivity",
    "DeviceListRefusal",
    "DeviceListRefused",
    "Directory",
    "EnrolmentStore",
    "Envelope",
    "EnvelopeQueue",
    "FanOutQueue",
    "LinkChannelStore",
    "LinkPostResult",
    "NewSend",
    "NotFound",
    "Organisation",
    "OrganisationPolicy",
    "OrganisationState",
    "PendingResult",
    "PrekeyStore",
    "Principal",
    "PublishedDeviceList",
    "PushTargetStore",
    "RateLimits",
    "Registration",
    "RegistrationRefusal",
    "RegistrationRefused",
    "RevokedDevice",
    "SeatLimitReached",
    "SendOutcome",
    "SendStatus",
    "Store",
    "StoreError",
    "StoreLifecycle",
    "User",
    "UserState",
    "WakeupQueue",
]


class Store(StoreLifecycle, ClusterCapable, EnvelopeQueue, FanOutQueue, Directory,
            OrganisationPolicy, EnrolmentStore, AccountKeyStore, LinkChannelStore, PrekeyStore,
            RateLimits, AdminStore, DeviceActivity, PushTargetStore, WakeupQueue, BlobStore,
            DeliveryAccessStore, Protocol):
    """The relay's whole persistent state: every capability of ``storage.interfaces``.

    All methods are safe to call concurrently.
    """
