"""Prekey tables and the statements on them, shared by the SQLite and PostgreSQL stores.

Both backends run the same SQL (``?`` placeholders are rewritten for psycopg); a
``storage.sql_dialect.Dialect`` carries what differs: the row locks PostgreSQL needs because
other nodes write concurrently.
Every function here runs inside the caller's write transaction (the group-commit writer's
savepoint), so whatever it raises undoes everything it did.

Why two tables: the signed prekey and the last-resort KEM prekey are one row per device and kind,
replaced on upload; one-time keys are a pool, claimed oldest first. ``prekey_number`` orders the
pool by upload and gives the claim a single row to delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crypto.prekey_format import PrekeyKind
from storage.prekey_records import ClaimedBundle, Prekey, PrekeyCounts, PrekeyPoolFull, PrekeyUpload
from storage.records import Device, NotFound
from storage.sql_dialect import Connection, Dialect

__all__ = [
    "POSTGRES_PREKEY_TABLES",
    "SQLITE_PREKEY_TABLES",
    "claim_bundles",
    "prekey_counts",
    "store_prekeys",
]

SQLITE_PREKEY_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE signed_prekeys (
        user_id TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('signed', 'kem_last_resort')),
        key_id INTEGER NOT NULL,
        public_key BLOB NOT NULL,
        signature BLOB NOT NULL,
        uploaded_at INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id, kind),
        FOREIGN KEY (user_id, device_id)
            REFERENCES devices (user_id, device_id) ON DELETE CASCADE
    )
    """,
    # AUTOINCREMENT: claim order is upload order, even after the newest keys were claimed.
    """
    CREATE TABLE one_time_prekeys (
        prekey_number INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('one_time', 'kem_one_time')),
        key_id INTEGER NOT NULL,
        public_key BLOB NOT NULL,
        signature BLOB,
        uploaded_at INTEGER NOT NULL,
        UNIQUE (user_id, device_id, kind, key_id),
        FOREIGN KEY (user_id, device_id)
            REFERENCES devices (user_id, device_id) ON DELETE CASCADE
    )
    """,
    """
    CREATE INDEX one_time_prekeys_by_device
        ON one_time_prekeys (user_id, device_id, kind, prekey_number)
    """,
)

POSTGRES_PREKEY_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE signed_prekeys (
        user_id TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('signed', 'kem_last_resort')),
        key_id BIGINT NOT NULL,
        public_key BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        uploaded_at BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id, kind),
        FOREIGN KEY (user_id, device_id)
            REFERENCES devices (user_id, device_id) ON DELETE CASCADE
    )
    """,
    """
    CREATE TABLE one_time_prekeys (
        prekey_number BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('one_time', 'kem_one_time')),
        key_id BIGINT NOT NULL,
        public_key BYTEA NOT NULL,
        signature BYTEA,
        uploaded_at BIGINT NOT NULL,
        UNIQUE (user_id, device_id, kind, key_id),
        FOREIGN KEY (user_id, device_id)
            REFERENCES devices (user_id, device_id) ON DELETE CASCADE
    )
    """,
    """
    CREATE INDEX one_time_prekeys_by_device
        ON one_time_prekeys (user_id, device_id, kind, prekey_number)
    """,
)


def _prekey(row: Sequence[Any]) -> Prekey:
    key_id, public_key, signature = row
    return Prekey(key_id=int(key_id), public_key=bytes(public_key),
                  signature=None if signature is None else bytes(signature))


def _require_device(connection: Connection, dialect: Dialect, user_id: str,
                    device_id: int, *, lock: bool) -> None:
    query = "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?"
    if lock:
        query += dialect.for_update
    if connection.execute(dialect.sql(query), (user_id, device_id)).fetchone() is None:
        raise NotFound("no such device")


def store_prekeys(connection: Connection, dialect: Dialect, *, user_id: str, device_id: int,
                  upload: PrekeyUpload, now: int, max_pool_size: int) -> PrekeyCounts:
    """Apply one upload (see ``Store.store_prekeys``). Raises NotFound, PrekeyPoolFull."""
    _require_device(connection, dialect, user_id, device_id, lock=True)
    replacements = ((PrekeyKind.SIGNED, upload.signed_prekey),
                    (PrekeyKind.KEM_LAST_RESORT, upload.kem_last_resort_prekey))
    for kind, prekey in replacements:
        if prekey is not None:
            connection.execute(dialect.sql(
                "INSERT INTO signed_prekeys (user_id, device_id, kind, key_id, public_key,"
                " signature, uploaded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, kind) DO UPDATE SET key_id = excluded.key_id,"
                " public_key = excluded.public_key, signature = excluded.signature,"
                " uploaded_at = excluded.uploaded_at"),
                (user_id, device_id, kind.value, prekey.key_id, prekey.public_key,
                 prekey.signature, now))
    pools = ((PrekeyKind.ONE_TIME, upload.one_time_prekeys),
             (PrekeyKind.KEM_ONE_TIME, upload.kem_one_time_prekeys))
    for kind, prekeys in pools:
        for prekey in prekeys:
            # A key id already pooled is overwritten: a retried upload stores nothing twice.
            connection.execute(dialect.sql(
                "INSERT INTO one_time_prekeys (user_id, device_id, kind, key_id, public_key,"
                " signature, uploaded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id, kind, key_id) DO UPDATE SET"
                " public_key = excluded.public_key, signature = excluded.signature,"
                " uploaded_at = excluded.uploaded_at"),
                (user_id, device_id, kind.value, prekey.key_id, prekey.public_key,
                 prekey.signature, now))
    counts = _counts(connection, dialect, user_id, device_id)
    for kind, held in ((PrekeyKind.ONE_TIME, counts.one_time),
                       (PrekeyKind.KEM_ONE_TIME, counts.kem_one_time)):
        if held > max_pool_size:
            raise PrekeyPoolFull(kind=kind.value, max_pool_size=max_pool_size)
    return counts


def _counts(connection: Connection, dialect: Dialect, user_id: str,
            device_id: int) -> PrekeyCounts:
    pooled = dict(connection.execute(dialect.sql(
        "SELECT kind, COUNT(*) FROM one_time_prekeys WHERE user_id = ? AND device_id = ?"
        " GROUP BY kind"), (user_id, device_id)).fetchall())
    signed = dict(connection.execute(dialect.sql(
        "SELECT kind, key_id FROM signed_prekeys WHERE user_id = ? AND device_id = ?"),
        (user_id, device_id)).fetchall())
    signed_id = signed.get(PrekeyKind.SIGNED.value)
    last_resort_id = signed.get(PrekeyKind.KEM_LAST_RESORT.value)
    return PrekeyCounts(
        one_time=int(pooled.get(PrekeyKind.ONE_TIME.value, 0)),
        kem_one_time=int(pooled.get(PrekeyKind.KEM_ONE_TIME.value, 0)),
        signed_prekey_id=None if signed_id is None else int(signed_id),
        kem_last_resort_prekey_id=None if last_resort_id is None else int(last_resort_id))


def prekey_counts(connection: Connection, dialect: Dialect, *, user_id: str,
                  device_id: int) -> PrekeyCounts:
    """See ``Store.prekey_counts``. Raises NotFound."""
    _require_device(connection, dialect, user_id, device_id, lock=False)
    return _counts(connection, dialect, user_id, device_id)


def _claim_one(connection: Connection, dialect: Dialect, user_id: str, device_id: int,
               kind: PrekeyKind) -> Prekey | None:
    # One statement: the row is chosen and deleted atomically; RETURNING hands it to this
    # caller only. (SQLite and PostgreSQL both support DELETE ... RETURNING.) The only text
    # joined in is the dialect's constant lock clause; every value is a bound parameter.
    row = connection.execute(dialect.sql(
        "DELETE FROM one_time_prekeys WHERE prekey_number = (SELECT prekey_number"  # noqa: S608
        " FROM one_time_prekeys WHERE user_id = ? AND device_id = ? AND kind = ?"
        " ORDER BY prekey_number LIMIT 1" + dialect.skip_locked + ")"
        " RETURNING key_id, public_key, signature"),
        (user_id, device_id, kind.value)).fetchone()
    return None if row is None else _prekey(row)


def claim_bundles(connection: Connection, dialect: Dialect, *, user_id: str,
                  device_ids: Sequence[int] | None) -> list[ClaimedBundle]:
    """See ``Store.claim_bundles``."""
    rows = connection.execute(dialect.sql(
        "SELECT user_id, device_id, identity_key, registered_at FROM devices"
        " WHERE user_id = ? ORDER BY device_id"), (user_id,)).fetchall()
    wanted = None if device_ids is None else set(device_ids)
    bundles = []
    for row in rows:
        device = Device(user_id=str(row[0]), device_id=int(row[1]),
                        identity_key=bytes(row[2]), registered_at=int(row[3]))
        if wanted is not None and device.device_id not in wanted:
            continue
        bundles.append(_claim_for(connection, dialect, device))
    return bundles


def _claim_for(connection: Connection, dialect: Dialect, device: Device) -> ClaimedBundle:
    signed: dict[str, Prekey] = {
        str(kind): _prekey(rest) for kind, *rest in connection.execute(dialect.sql(
            "SELECT kind, key_id, public_key, signature FROM signed_prekeys"
            " WHERE user_id = ? AND device_id = ?"),
            (device.user_id, device.device_id)).fetchall()}
    signed_prekey = signed.get(PrekeyKind.SIGNED.value)
    last_resort = signed.get(PrekeyKind.KEM_LAST_RESORT.value)
    one_time = kem_one_time = None
    # Without both signed keys a peer cannot run PQXDH: claiming one-time keys would waste them.
    if signed_prekey is not None and last_resort is not None:
        one_time = _claim_one(connection, dialect, device.user_id, device.device_id,
                              PrekeyKind.ONE_TIME)
        kem_one_time = _claim_one(connection, dialect, device.user_id, device.device_id,
                                  PrekeyKind.KEM_ONE_TIME)
    return ClaimedBundle(
        device=device, signed_prekey=signed_prekey, one_time_prekey=one_time,
        kem_prekey=kem_one_time if kem_one_time is not None else last_resort,
        kem_one_time=kem_one_time is not None,
        remaining=_counts(connection, dialect, device.user_id, device.device_id))
