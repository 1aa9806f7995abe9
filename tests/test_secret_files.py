"""Secrets from files: OPSCENTRE_<NAME>_FILE for the secret settings, and the ClickHouse password."""

from __future__ import annotations

import pytest

from opscentre.settings import Settings, SettingsError


def test_a_secret_comes_from_its_file(tmp_path, monkeypatch):
    (tmp_path / "key").write_text("k3y with spaces\r\n")
    monkeypatch.setenv("OPSCENTRE_PSEUDONYM_KEY_FILE", str(tmp_path / "key"))
    assert Settings.from_env().require_pseudonym_key() == b"k3y with spaces"


@pytest.mark.parametrize("setting", ["PSEUDONYM_KEY", "CLICKHOUSE_PASSWORD", "GRAFANA_CLICKHOUSE_PASSWORD",
                                     "GRAFANA_TOKEN"])
def test_every_secret_setting_has_a_file_variant(tmp_path, monkeypatch, setting):
    (tmp_path / "secret").write_text("s3cret\n")
    monkeypatch.setenv(f"OPSCENTRE_{setting}_FILE", str(tmp_path / "secret"))
    assert getattr(Settings.from_env(), setting.lower()) == "s3cret"


@pytest.mark.parametrize("content, message", [
    (None, "OPSCENTRE_PSEUDONYM_KEY_FILE: cannot read .*: No such file or directory"),
    ("\n", "OPSCENTRE_PSEUDONYM_KEY_FILE: .* is empty"),
    (b"\xff\xfe", "OPSCENTRE_PSEUDONYM_KEY_FILE: cannot read"),
])
def test_an_unusable_file_is_one_line(tmp_path, monkeypatch, content, message):
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.setenv("OPSCENTRE_PSEUDONYM_KEY_FILE", str(path))
    with pytest.raises(SettingsError, match=message) as raised:
        Settings.from_env()
    assert "\n" not in str(raised.value)


def test_a_value_and_a_file_together_are_refused(tmp_path, monkeypatch):
    (tmp_path / "key").write_text("one")
    monkeypatch.setenv("OPSCENTRE_PSEUDONYM_KEY", "two")
    monkeypatch.setenv("OPSCENTRE_PSEUDONYM_KEY_FILE", str(tmp_path / "key"))
    with pytest.raises(SettingsError, match="OPSCENTRE_PSEUDONYM_KEY and OPSCENTRE_PSEUDONYM_KEY_FILE are both set"):
        Settings.from_env()


def test_settings_that_are_not_secret_have_no_file_variant(tmp_path, monkeypatch):
    (tmp_path / "kafka").write_text("elsewhere:9092")
    monkeypatch.setenv("OPSCENTRE_KAFKA_FILE", str(tmp_path / "kafka"))
    assert Settings.from_env().kafka is None


@pytest.mark.parametrize("url, password, expected", [
    ("clickhouse://writer@clickhouse:9000/opscentre", "p@ss:w/rd#1",
     "clickhouse://writer:p%40ss%3Aw%2Frd%231@clickhouse:9000/opscentre"),
    ("clickhouse://clickhouse/opscentre", "x", "clickhouse://default:x@clickhouse/opscentre"),
    ("clickhouse://writer:inline@clickhouse:9000/opscentre", None, "clickhouse://writer:inline@clickhouse:9000/opscentre"),
])
def test_the_clickhouse_password_goes_into_the_url(url, password, expected):
    assert Settings(clickhouse=url, clickhouse_password=password).require_clickhouse() == expected


def test_the_driver_gets_the_password_back_exactly():
    from opscentre.clickhouse import NativeStore

    store = NativeStore(Settings(clickhouse="clickhouse://writer@127.0.0.1:1/opscentre",
                                 clickhouse_password="p@ss:w/rd#1 %").require_clickhouse())
    assert (store._client.connection.user, store._client.connection.password) == ("writer", "p@ss:w/rd#1 %")
    assert "p@ss" not in store.describe()


@pytest.mark.parametrize("url, message", [
    ("clickhouse://writer:inline@clickhouse:9000/opscentre", "has a password and OPSCENTRE_CLICKHOUSE_PASSWORD is set"),
    ("chdb:///var/clickhouse", "is for a server"),
])
def test_the_clickhouse_password_refuses_what_it_cannot_join(url, message):
    with pytest.raises(SettingsError, match=message):
        Settings(clickhouse=url, clickhouse_password="x").require_clickhouse()
