"""Configuration: file < environment < flags, every setting reachable the same way,
clear errors naming the setting and its source, secrets masked in ``config show``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.config import (
    MASK,
    ConfigError,
    environment_variable,
    load_config,
    masked,
)
from relay.settings import RelaySettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, 'listen_port = 5001\nmax_queue_depth = 7\nlisten_host = "10.0.0.1"\n')
    loaded = load_config(config_file=config,
                         environ={"CRYPTOPASS_LISTEN_PORT": "5002", "CRYPTOPASS_RETRY": "off"},
                         flags={"listen_port": 5003})
    settings = loaded.settings
    assert (settings.listen_port, settings.max_queue_depth, settings.listen_host,
            settings.retry) == (5003, 7, "10.0.0.1", False)
    assert loaded.sources["listen_port"] == "flag"
    assert loaded.sources["retry"] == "CRYPTOPASS_RETRY"
    assert loaded.sources["max_queue_depth"] == f"file {config}"
    assert loaded.sources["idle_timeout_s"] == "default"


def test_the_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path, 'data_dir = "/srv/relay"\n')
    loaded = load_config(environ={"CRYPTOPASS_CONFIG": str(config)})
    assert loaded.settings.data_dir == Path("/srv/relay")


def test_every_setting_is_reachable_from_file_environment_and_flags() -> None:
    """Generic by construction: a field added to RelaySettings later is covered too."""
    defaults = RelaySettings()
    for field in dataclasses.fields(RelaySettings):
        value = getattr(defaults, field.name)
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        from_env = load_config(environ={environment_variable(field.name): text})
        from_flag = load_config(environ={}, flags={field.name: text})
        assert getattr(from_env.settings, field.name) == value, field.name
        assert getattr(from_flag.settings, field.name) == value, field.name
        assert from_env.sources[field.name] == environment_variable(field.name)


@pytest.mark.parametrize(("environ", "message"), [
    ({"CRYPTOPASS_LISTEN_PORT": "abc"},
     "setting listen_port (from CRYPTOPASS_LISTEN_PORT): expected an integer, got 'abc'"),
    ({"CRYPTOPASS_LISTEN_PORT": "70000"},
     "setting listen_port (from CRYPTOPASS_LISTEN_PORT): port 70000 is out of range"),
    ({"CRYPTOPASS_MAX_QUEUE_DEPTH": "-3"},
     "setting max_queue_depth (from CRYPTOPASS_MAX_QUEUE_DEPTH): must be positive, got -3"),
    ({"CRYPTOPASS_IDLE_TIMEOUT_S": "0"},
     "setting idle_timeout_s (from CRYPTOPASS_IDLE_TIMEOUT_S): must be positive"),
    ({"CRYPTOPASS_RETRY": "maybe"},
     "setting retry (from CRYPTOPASS_RETRY): expected true or false, got 'maybe'"),
    ({"CRYPTOPASS_SMS_GATEWAY": "pigeon"},
     "setting sms_gateway (from CRYPTOPASS_SMS_GATEWAY): expected one of outbox, http"),
    ({"CRYPTOPASS_SMS_GATEWAY": "http", "CRYPTOPASS_SMS_HTTP_URL": "https://sms.example"},
     "setting sms_http_token (from default): required when sms_gateway is http"),
    ({"CRYPTOPASS_CERT": "/etc/relay/cert.pem"},
     "setting key (from default): cert and key go together"),
    ({"CRYPTOPASS_METRICS_LISTEN": "9464"},
     "setting metrics_listen (from CRYPTOPASS_METRICS_LISTEN): expected HOST:PORT"),
    ({"CRYPTOPASS_LOG_LEVEL": "loud"},
     "setting log_level (from CRYPTOPASS_LOG_LEVEL): expected one of debug, info"),
])
def test_bad_values_are_refused_naming_setting_and_source(environ: dict[str, str],
                                                          message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert str(caught.value).startswith(message), str(caught.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    unknown = write(tmp_path, "listen_prot = 4433\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'listen_prot' \(from file .*relay"):
        load_config(config_file=unknown, environ={})
    wrong_type = write(tmp_path, 'listen_port = "4433"\n')
    with pytest.raises(ConfigError, match=r"setting listen_port \(from file .*\): expected an "
                                          r"integer, got '4433'"):
        load_config(config_file=wrong_type, environ={})
    broken = write(tmp_path, "listen_port = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(config_file=broken, environ={})
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(config_file=tmp_path / "missing.toml", environ={})


def test_unknown_flag_and_foreign_variables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'colour' \(from a flag\)"):
        load_config(environ={}, flags={"colour": "blue"})
    loaded = load_config(environ={"CRYPTOPASS_TEST_POSTGRES": "postgresql://x"})
    assert loaded.warnings == [
        "environment variable CRYPTOPASS_TEST_POSTGRES names no relay setting; ignored"]


def test_secrets_are_masked() -> None:
    settings = RelaySettings(sms_gateway="http", sms_http_url="https://u:pw1@sms.example/send",
                             sms_http_token="tok-secret")
    shown = masked(settings)
    assert shown["sms_http_token"] == MASK
    assert shown["sms_http_url"] == f"https://u:{MASK}@sms.example/send"
    assert shown["data_dir"] == str(settings.data_dir)
    assert "pw1" not in json.dumps(shown) and "tok-secret" not in json.dumps(shown)


def test_config_show_and_check_commands(tmp_path: Path) -> None:
    config = write(tmp_path, 'sms_gateway = "http"\nsms_http_url = "https://sms.example"\n'
                             'sms_http_token = "tok-secret"\n')
    runner = CliRunner()
    shown = runner.invoke(app, ["config", "show", "--config", str(config), "--json",
                                "--set", "listen_port=4555"],
                          env={"CRYPTOPASS_MAX_QUEUE_DEPTH": "9"})
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert document["sms_http_token"] == {"value": MASK, "source": f"file {config}"}
    assert document["listen_port"] == {"value": 4555, "source": "flag"}
    assert document["max_queue_depth"] == {"value": 9, "source": "CRYPTOPASS_MAX_QUEUE_DEPTH"}
    assert "tok-secret" not in shown.output
    text = runner.invoke(app, ["config", "show", "--config", str(config)], env={})
    assert 'sms_http_token = "********"' in text.stdout and "tok-secret" not in text.output

    checked = runner.invoke(app, ["config", "check"], env={"CRYPTOPASS_LISTEN_PORT": "x"})
    assert checked.exit_code == 1
    assert "error: setting listen_port (from CRYPTOPASS_LISTEN_PORT)" in checked.output
    assert runner.invoke(app, ["config", "check", "--config", str(config)],
                         env={}).exit_code == 0


def test_serve_refuses_a_bad_configuration_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "d"),
                                      "--set", "envelope_ttl_ms=soon"], env={})
    assert result.exit_code == 1
    assert "setting envelope_ttl_ms (from flag): expected an integer" in result.output
    assert not (tmp_path / "d").exists()  # nothing was created


def test_admin_commands_find_the_configured_data_dir(tmp_path: Path) -> None:
    """In a container, `admin` must open the store `serve` uses (CRYPTOPASS_DATA_DIR=/data)."""
    data = tmp_path / "configured"
    result = CliRunner().invoke(app, ["admin", "org", "create", "acme", "--seats", "1"],
                                env={"CRYPTOPASS_DATA_DIR": str(data)})
    assert result.exit_code == 0, result.output
    assert (data / "relay.db").is_file()
