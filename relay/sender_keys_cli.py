"""``cryptopass-relay sender-keys``: list and rotate the sender-certificate keys.

The keys are files of ``DATA_DIR/sender-cert-keys/`` (relay/sender_certificates.py). Rotation
retires the signing key (still published and accepted until the certificates it signed have
expired, a day) and makes the next one; a running relay reads the directory again within a
minute. In a cluster, rotate on one node, then copy the directory to every other node
(docs/CLUSTER.md).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from relay.config import ConfigError, load_config
from relay.sender_certificates import (
    SenderKeyError,
    SenderKeyring,
    load_keyring,
    rotate_keys,
    sender_key_directory,
)

__all__ = ["register_sender_key_commands"]

DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help="Data directory \\[default: the configured data_dir].")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _directory(data_dir: Path | None) -> Path:
    try:
        configured = load_config(environ=os.environ).settings
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    return sender_key_directory(data_dir or configured.data_dir)


def _show(keyring: SenderKeyring, json_output: bool) -> None:
    rows = [{"key_id": key.key_id, "public_key": key.public_key.hex(),
             "signing": key is keyring.signing, "not_after_ms": key.not_after_ms()}
            for key in keyring.accepted]
    if json_output:
        typer.echo(json.dumps({"keys": rows}, indent=2))
        return
    for row in rows:
        until = row["not_after_ms"]
        state = ("signs" if row["signing"] else "accepted until " + datetime.datetime.fromtimestamp(
            int(until) / 1000, datetime.UTC).isoformat(timespec="seconds") if until else "")
        typer.echo(f"key {row['key_id']}  {row['public_key']}  {state}")


def register_sender_key_commands(app: typer.Typer) -> None:
    """Add ``sender-keys list`` and ``sender-keys rotate`` to ``cryptopass-relay``."""
    keys_app = typer.Typer(help="The relay's sender-certificate keys (sealed sender).",
                           no_args_is_help=True)
    app.add_typer(keys_app, name="sender-keys")

    @keys_app.command("list")
    def list_keys(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
        """Show the keys a relay publishes: the one that signs and those still accepted."""
        try:
            keyring = load_keyring(_directory(data_dir), now_ms=time.time_ns() // 1_000_000,
                                   create=False)
        except (SenderKeyError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        _show(keyring, json_output)

    @keys_app.command("rotate")
    def rotate(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
        """Make a new signing key; the previous one stays accepted until the certificates it
        signed expire (a day). Running relays read it within a minute; copy the directory to
        every node of a cluster."""
        try:
            keyring = rotate_keys(_directory(data_dir), now_ms=time.time_ns() // 1_000_000)
        except (SenderKeyError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        _show(keyring, json_output)
