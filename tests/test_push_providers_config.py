"""The push settings: checked at start with errors naming the setting, and what ``config show``
prints of them (paths, never the credentials they point to)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.config import ConfigError, load_config
from relay.settings import DEFAULT_PUSH_WEBPUSH_ALLOWED_HOSTS, allowed_push_hosts


@pytest.mark.parametrize(("environ", "message"), [
    ({"CRYPTOPASS_PUSH_WEBPUSH_SUBJECT": "ops@example.org"},
     "setting push_webpush_subject (from CRYPTOPASS_PUSH_WEBPUSH_SUBJECT): a mailto: or https://"),
    ({"CRYPTOPASS_PUSH_WEBPUSH_ALLOWED_HOSTS": "push.example.org,http://evil/"},
     "setting push_webpush_allowed_hosts (from CRYPTOPASS_PUSH_WEBPUSH_ALLOWED_HOSTS): "
     "'http://evil/' is not a host name"),
    ({"CRYPTOPASS_PUSH_APNS_KEY_FILE": "/etc/AuthKey.p8"},
     "setting push_apns_key_id (from default): required when push_apns_key_file is set"),
    ({"CRYPTOPASS_PUSH_FCM_BASE_URL": "fcm.googleapis.com"},
     "setting push_fcm_base_url (from CRYPTOPASS_PUSH_FCM_BASE_URL): expected an https:// URL"),
    ({"CRYPTOPASS_PUSH_TIMEOUT_S": "0"},
     "setting push_timeout_s (from CRYPTOPASS_PUSH_TIMEOUT_S): must be positive"),
])
def test_bad_push_settings_are_refused_by_name(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ=environ)
    assert message in str(raised.value)


def test_the_default_allow_list_is_the_public_push_services() -> None:
    assert allowed_push_hosts(DEFAULT_PUSH_WEBPUSH_ALLOWED_HOSTS) == (
        "fcm.googleapis.com", "push.services.mozilla.com", "notify.windows.com",
        "push.apple.com")
    assert allowed_push_hosts(" Push.Example.ORG. , ,x.test") == ("push.example.org", "x.test")


def test_config_show_names_credential_files_without_reading_them(tmp_path: Path) -> None:
    credentials = tmp_path / "fcm.json"
    credentials.write_text(json.dumps({"private_key": "CREDENTIAL-MARKER"}))
    config = tmp_path / "relay.toml"
    config.write_text(f'push_fcm_credentials_file = "{credentials}"\n'
                      f'push_fcm_base_url = "https://user:pa55word@fcm.example.org"\n'
                      'push_webpush_subject = "mailto:ops@example.org"\n')
    result = CliRunner().invoke(app, ["config", "show", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["push_fcm_credentials_file"]["value"] == str(credentials)
    assert shown["push_fcm_base_url"]["value"] == "https://user:********@fcm.example.org"
    assert shown["push_webpush_allow_loopback_http"]["value"] is False
    assert "CREDENTIAL-MARKER" not in result.output and "pa55word" not in result.output
