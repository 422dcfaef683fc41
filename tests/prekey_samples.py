"""Sample prekey frames, one per type, shared by the codec and state-table tests.

Every optional field is set, so that round trips exercise each nested value.
"""

from __future__ import annotations

from crypto.prekey_format import KEM_PUBLIC_KEY_SIZE
from wire.frames import Frame, FrameType
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
    PrekeysLow,
    PrekeysUploaded,
    SignedPrekey,
    UploadPrekeys,
)

USER_ID = "u-0123456789abcdef"
SIGNED = SignedPrekey(key_id=1, public_key=b"x" * 32, signature=b"s" * 64)
ONE_TIME = OneTimePrekey(key_id=2, public_key=b"o" * 32)
KEM = KemPrekey(key_id=3, public_key=b"k" * KEM_PUBLIC_KEY_SIZE, signature=b"t" * 64)

PREKEY_SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.UPLOAD_PREKEYS: UploadPrekeys(
        signed_prekey=SIGNED, kem_last_resort_prekey=KEM, one_time_prekeys=(ONE_TIME,),
        kem_one_time_prekeys=(KEM,)),
    FrameType.FETCH_BUNDLE: FetchBundle(user_id=USER_ID, device_ids=(1, 2)),
    FrameType.GET_PREKEY_COUNTS: GetPrekeyCounts(),
    FrameType.LIST_DEVICES: ListDevices(user_id=USER_ID),
    FrameType.PREKEYS_UPLOADED: PrekeysUploaded(one_time=5, kem_one_time=6, signed_prekey_id=1,
                                                kem_last_resort_prekey_id=3),
    FrameType.BUNDLE: Bundle(user_id=USER_ID, bundles=(
        DeviceBundle(device_id=1, identity_key=b"i" * 32, signed_prekey=SIGNED,
                     one_time_prekey=ONE_TIME, kem_prekey=KEM, kem_one_time=True),)),
    FrameType.PREKEY_COUNTS: PrekeyCounts(one_time=0, kem_one_time=1, signed_prekey_id=1,
                                          kem_last_resort_prekey_id=3),
    FrameType.DEVICE_LIST: DeviceList(user_id=USER_ID, devices=(
        DeviceInfo(device_id=1, registered_at=1_700_000_000_000, identity_key=b"i" * 32),
        DeviceInfo(device_id=2, registered_at=1_700_000_000_001, identity_key=b"j" * 32)),
        account_key=b"a" * 32, signed_list=b"l" * 200),
    FrameType.PREKEYS_LOW: PrekeysLow(one_time=3, kem_one_time=9),
}
