"""storage.store_url: which store a URL names, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.store_url import StoreLocation, open_store, parse_store_url


def test_no_url_is_sqlite_in_the_data_directory() -> None:
    assert parse_store_url(None, data_dir=Path("d")) == StoreLocation(
        kind="sqlite", sqlite_path=Path("d/relay.db"))


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///relay.db", Path("relay.db")),
    ("sqlite:////var/lib/cryptopass/relay.db", Path("/var/lib/cryptopass/relay.db")),
])
def test_sqlite_urls_name_a_file(url: str, path: Path) -> None:
    assert parse_store_url(url, data_dir=Path("ignored")).sqlite_path == path


@pytest.mark.parametrize("url", [
    "postgresql://relay:secret@db.internal:5433/cryptopass",
    "postgres://relay@db.internal/cryptopass?sslmode=require",
])
def test_postgresql_urls_go_to_libpq_unchanged(url: str) -> None:
    location = parse_store_url(url, data_dir=Path("d"))
    assert (location.kind, location.postgres_dsn) == ("postgresql", url)


def test_descriptions_never_show_credentials() -> None:
    location = parse_store_url("postgresql://relay:secret@db.internal:5433/cryptopass",
                               data_dir=Path("d"))
    assert location.describe() == "postgresql://db.internal:5433/cryptopass"


@pytest.mark.parametrize("url", [
    "mysql://db/x", "sqlite://relay.db", "sqlite:///", "sqlite:///dir/", "relay.db", "",
])
def test_other_urls_are_refused_clearly(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        parse_store_url(url, data_dir=Path("d"))


async def test_an_explicit_sqlite_url_opens_that_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.db"
    async with open_store(parse_store_url(f"sqlite:///{path}", data_dir=tmp_path)) as store:
        await store.create_organisation(name="acme", seats=1, now=0)
    assert path.exists()
    assert not (tmp_path / "relay.db").exists()
