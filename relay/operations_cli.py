"""Operator commands around the relay process: ``config check|show``, ``backup``, ``restore``.

Registered on ``cryptopass-relay`` by ``relay.cli``.

``restore`` replaces the store, so it takes the data directory's lock
(relay/data_dir.py) for its duration: refused while a relay runs on the
directory, and no relay can start meanwhile. ``backup`` takes no lock: it reads
the store through SQLite, consistently, while the relay keeps serving; the blobs' files
(``DATA_DIR/blobs/``) go into the same backup file, each up to its committed bytes, and
``restore`` writes them back. It does not copy
the enrolment secret (relay/enrolment_secret.py), which must stay apart from the store's
copies; it warns if the secret's file is missing.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from relay.config import ConfigError, LoadedConfig, load_config, masked, parse_assignment
from relay.data_dir import DataDirectoryInUse, lock_data_dir
from relay.enrolment_secret import EnrolmentSecretError, enrolment_secret_path, read_secret_file
from relay.settings import DEFAULT_DATA_DIR
from storage.sqlite_backup import BackupError, backup_database, restore_database

__all__ = ["DATABASE_NAME", "register_operations_commands"]

DATABASE_NAME = "relay.db"

config_app = typer.Typer(help="Check or show the relay's configuration.", no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", help="TOML configuration file \\[env: CRYPTOPASS_CONFIG].")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Any setting, FIELD=VALUE (repeatable), as for serve.")]
DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help="Relay data directory \\[default: the configured data_dir, "
                       f"else {DEFAULT_DATA_DIR}].")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _load(config: Path | None, assignments: list[str] | None) -> LoadedConfig:
    try:
        flags = dict(parse_assignment(text) for text in assignments or [])
        return load_config(config_file=config, environ=os.environ, flags=flags)
    except ConfigError as error:
        _fail(str(error))
        raise  # unreachable: _fail exits


@config_app.command("check")
def config_check(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Validate the configuration (file, CRYPTOPASS_* variables, --set); exit 1 if wrong."""
    loaded = _load(config, set_)
    for warning in loaded.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo("configuration is valid")


@config_app.command("show")
def config_show(config: ConfigOption = None, set_: SetOption = None,
                json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")]
                = False) -> None:
    """Print every setting with its source; secrets are masked."""
    loaded = _load(config, set_)
    values = masked(loaded.settings)
    if json_output:
        typer.echo(json.dumps({name: {"value": value, "source": loaded.sources[name]}
                               for name, value in values.items()}, indent=2))
        return
    for warning in loaded.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for name, value in values.items():
        if value is None:  # TOML has no null: an unset setting is shown as a comment
            typer.echo(f"# {name} is unset  # {loaded.sources[name]}")
        else:
            typer.echo(f"{name} = {_toml_value(value)}  # {loaded.sources[name]}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _data_dir(data_dir: Path | None, config: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    return _load(config, None).settings.data_dir


def backup_command(
        to: Annotated[Path, typer.Option("--to", help="Backup file to write.")],
        data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Copy the store, blobs (uploaded files) included, to --to, consistently, while the relay
    keeps serving.

    The enrolment secret is not in the copy (a stolen backup must not reveal pending codes):
    back its file up too, kept apart. A warning says so if the file is missing.
    """
    directory = _data_dir(data_dir, config)
    try:
        size = backup_database(directory / DATABASE_NAME, to)
    except (BackupError, OSError) as error:
        _fail(str(error))
    typer.echo(f"backed up {directory / DATABASE_NAME} to {to} ({size} bytes)")
    _warn_about_the_enrolment_secret(enrolment_secret_path(
        directory, _load(config, None).settings.enrolment_secret_file))


def _warn_about_the_enrolment_secret(path: Path) -> None:
    """The backup holds no enrolment secret: say where it is, or that it is missing."""
    try:
        present = read_secret_file(path) is not None
    except EnrolmentSecretError as error:
        typer.echo(f"warning: {error}; back up a good copy of the enrolment secret with the "
                   "store", err=True)
        return
    if present:
        typer.echo(f"the enrolment secret {path} is not in the backup: back it up too, kept "
                   "apart from it")
    else:
        typer.echo(f"warning: no enrolment secret at {path}: without it, the store's pending "
                   "codes and limits per number are lost; back it up with the store (run "
                   "`cryptopass-relay secret create` if this relay never had one)", err=True)


def restore_command(
        from_: Annotated[Path, typer.Option("--from", help="Backup file to restore.")],
        data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Replace the store and its blobs with --from. Refused while a relay runs on the data
    directory."""
    directory = _data_dir(data_dir, config)
    try:
        with lock_data_dir(directory, purpose="restore"):
            safety = restore_database(from_, directory / DATABASE_NAME,
                                      now=datetime.datetime.now(datetime.UTC))
    except DataDirectoryInUse as error:
        _fail(f"cannot restore: {error}; stop it first")
        raise  # unreachable: _fail exits
    except (BackupError, OSError) as error:
        _fail(str(error))
        raise  # unreachable: _fail exits
    kept = f"; the previous store is kept as {safety}" if safety else ""
    typer.echo(f"restored {directory / DATABASE_NAME} from {from_}{kept}")


def register_operations_commands(app: typer.Typer) -> None:
    """Add ``config``, ``backup`` and ``restore`` to the relay's command line."""
    app.add_typer(config_app, name="config")
    app.command("backup")(backup_command)
    app.command("restore")(restore_command)
