"""The teams file: who receives which alerts, and on which channels (format in teams.yml)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from opscentre.settings import SettingsError

DEFAULT_FILE = Path(__file__).with_name("teams.yml")
CHANNELS = ("telegram", "email", "webhook")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CODE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # province and agency codes (CONTRACT §1)
_KEYS = {"name", "title", "business", "province", "agency", "telegram_chat_id", "email", "webhook_url"}


@dataclass(frozen=True)
class Team:
    name: str
    title: str
    business: bool = False
    province: str | None = None
    agency: str | None = None
    telegram_chat_id: int | None = None
    email: str | None = None
    webhook_url: str | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        given = {"telegram": self.telegram_chat_id, "email": self.email, "webhook": self.webhook_url}
        return tuple(channel for channel in CHANNELS if given[channel] is not None)

    @property
    def scope(self) -> str:
        """What the team receives, in words (README table)."""
        if not self.business:
            return f'alerts labelled team="{self.name}"'
        where = [f"province {self.province}" if self.province else "", f"agency {self.agency}" if self.agency else ""]
        return "business alerts" + (" of " + ", ".join(w for w in where if w) if any(where) else "")


def _team(entry, where: str) -> Team:
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a mapping of name, title, channels")
    unknown = set(entry) - _KEYS
    if unknown:
        raise SettingsError(f"{where}: unknown key {min(unknown)!r} (expected {', '.join(sorted(_KEYS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SettingsError(f"{where}: name {name!r} must be lower-case letters, digits and '-'")
    where = f"{where} ({name})"
    business = entry.get("business", False)
    if not isinstance(business, bool):
        raise SettingsError(f"{where}: business must be true or false, got {business!r}")
    values = {}
    for key in ("province", "agency"):
        value = entry.get(key)
        if value is None:
            continue
        if not business:
            raise SettingsError(f"{where}: {key} narrows business alerts; set business: true")
        if not isinstance(value, str) or not _CODE.match(value):
            raise SettingsError(f"{where}: {key} must be a code such as \"01\" or STP (quoted), got {value!r}")
        values[key] = value
    chat = entry.get("telegram_chat_id")
    if chat is not None and (isinstance(chat, bool) or not isinstance(chat, int) or chat == 0):
        raise SettingsError(f"{where}: telegram_chat_id must be a non-zero integer, got {chat!r}")
    email = entry.get("email")
    if email is not None and (not isinstance(email, str) or "@" not in email):
        raise SettingsError(f"{where}: email must be an address, got {email!r}")
    url = entry.get("webhook_url")
    if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url)):
        raise SettingsError(f"{where}: webhook_url must be an http(s) URL, got {url!r}")
    team = Team(name=name, title=str(entry.get("title") or name), business=business,
                telegram_chat_id=chat, email=email, webhook_url=url, **values)
    if not team.channels:
        raise SettingsError(f"{where}: no channel (telegram_chat_id, email or webhook_url)")
    return team


def load_teams(path: str | Path | None = None) -> tuple[Team, ...]:
    """The teams of OPSCENTRE_TEAMS_FILE (or the default file); errors name the file and team."""
    source = Path(path) if path else DEFAULT_FILE
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"OPSCENTRE_TEAMS_FILE: cannot read {source}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{source}: not YAML: {str(exc).splitlines()[0]}") from None
    entries = data.get("teams") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{source}: expected a list under 'teams:'")
    teams = tuple(_team(entry, f"{source}: team {number}") for number, entry in enumerate(entries, 1))
    names = [team.name for team in teams]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SettingsError(f"{source}: team {repeated[0]!r} is defined twice")
    return teams
