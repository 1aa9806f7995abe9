"""Alertmanager's configuration (0.25, Debian 12), built from the config and the teams file.

The routing tree, first match first:
1. `replayed="true"`: nobody. Alerts raised again by `opscentre replay` page no one twice.
2. `team="<name>"` for each team without `business`: that team only (the pipeline's alerts,
   labelled with the pipeline team; the security boards' alerts, team="security").
3. `province=~".+"`: business alerts, to every business team whose province and agency match,
   and to every business team without them (the IOC duty desk receives them all).
4. Anything else: the pipeline team, who own the routing.
Under each team, `severity` picks the receiver: critical every channel of the team, warning
Telegram and e-mail, ticket e-mail; a team without those channels gets them on the others.

Secrets never appear in the generated file. Alertmanager 0.25 reads the SMTP password
(`smtp_auth_password_file`) and the webhook's bearer token (`http_config.authorization.
credentials_file`) from files itself. It has no `bot_token_file` for Telegram (0.26 added it,
with the webhook's `url_file`), so the bot token stays a placeholder here, and `start.sh`, beside
the generated file, writes a private copy with the token from its file before it starts
Alertmanager.
"""

from __future__ import annotations

from pathlib import Path

from opscentre.settings import ALERT_SEVERITIES, SettingsError

from ..config import Config
from .files import duration, write_yaml
from .prometheus_rules import alert_names
from .teams import Team, load_teams

CONFIG_FILE = Path("alertmanager/alertmanager.yml")
START_FILE = Path("alertmanager/start.sh")
NOBODY = "nobody"
SEVERITIES = ALERT_SEVERITIES
DEFAULT_SEVERITY = "warning"  # alerts with another severity, or none, go as warnings
SEVERITY_CHANNELS = {"critical": ("telegram", "email", "webhook"), "warning": ("telegram", "email"),
                     "ticket": ("email",)}
TELEGRAM_TOKEN_PLACEHOLDER = "TELEGRAM_BOT_TOKEN_FROM_FILE"

# A worker down, absent or unable to write explains its lag and latency: those are silenced.
WORKER_CAUSES = ("OpscentreWorkerDown", "OpscentreWorkerAbsent", "OpscentreClickHouseWritesFailing")
WORKER_SYMPTOMS = ("OpscentreConsumerLagHigh", "OpscentreConsumerLagGrowing", "OpscentreLatencyBudgetBurn")
# Labels that make two alerts of one name the same problem at two severities.
SAME_PROBLEM = ("alertname", "job", "instance", "topic", "partition", "province", "agency", "item_ref")

BUSINESS_GROUP_BY = ["alertname", "province", "agency", "severity"]
PIPELINE_GROUP_BY = ["alertname", "job", "severity"]

# Telegram, parse mode HTML: Alertmanager escapes the values (html/template); <b> and <i> are Telegram's.
TELEGRAM_MESSAGE = (
    '{{ range .Alerts }}<b>{{ if eq .Status "firing" }}{{ .Labels.severity | toUpper }}{{ else }}RESOLVED{{ end }}'
    "</b> {{ .Labels.alertname }}{{ with .Labels.province }} · {{ . }}{{ end }}"
    "{{ with .Labels.agency }} · {{ . }}{{ end }}{{ with .Labels.topic }} · {{ . }}{{ end }}\n"
    "{{ with .Annotations.summary }}{{ . }}\n{{ end }}"
    "{{ with .Annotations.summary_en }}<i>{{ . }}</i>\n{{ end }}"
    "{{ with .Annotations.runbook_url }}{{ . }}\n{{ end }}"
    "\n{{ end }}"
)


def _regex(names) -> str:
    return "|".join(names)


def receiver_name(team: Team, severity: str) -> str:
    return f"{team.name}-{severity}"


def channels_for(team: Team, severity: str) -> tuple[str, ...]:
    return tuple(c for c in SEVERITY_CHANNELS[severity] if c in team.channels) or team.channels


def _receiver(c: Config, team: Team, severity: str) -> dict:
    receiver: dict = {"name": receiver_name(team, severity)}
    for channel in channels_for(team, severity):
        if channel == "telegram":
            receiver["telegram_configs"] = [{
                "send_resolved": True, "api_url": c.telegram_api_url, "bot_token": TELEGRAM_TOKEN_PLACEHOLDER,
                "chat_id": team.telegram_chat_id, "parse_mode": "HTML", "message": TELEGRAM_MESSAGE,
            }]
        elif channel == "email":
            receiver["email_configs"] = [{"send_resolved": True, "to": team.email}]
        elif channel == "webhook":
            webhook: dict = {"send_resolved": True, "url": team.webhook_url}
            if c.webhook_token_file:
                webhook["http_config"] = {"authorization": {"type": "Bearer",
                                                            "credentials_file": c.webhook_token_file}}
            receiver["webhook_configs"] = [webhook]
    return receiver


def _team_route(team: Team, matchers: list[str], cont: bool = False) -> dict:
    route: dict = {"receiver": receiver_name(team, DEFAULT_SEVERITY)}
    if matchers:
        route["matchers"] = matchers
    if cont:
        route["continue"] = True
    route["routes"] = [{"receiver": receiver_name(team, severity), "matchers": [f'severity="{severity}"']}
                       for severity in SEVERITIES if severity != DEFAULT_SEVERITY]
    return route


def _pipeline_team(c: Config, teams) -> Team:
    for team in teams:
        if team.name == c.pipeline_team:
            if team.business:
                raise SettingsError(f"OPSCENTRE_ALERT_PIPELINE_TEAM: team {team.name!r} is a business team")
            return team
    raise SettingsError(f"OPSCENTRE_ALERT_PIPELINE_TEAM: no team {c.pipeline_team!r} in the teams file"
                        f" ({', '.join(t.name for t in teams)})")


def routing_tree(c: Config, teams) -> dict:
    pipeline = _pipeline_team(c, teams)
    labelled = [t for t in teams if not t.business]
    business = [t for t in teams if t.business]
    narrowed = [t for t in business if t.province or t.agency]
    everywhere = [t for t in business if not (t.province or t.agency)]

    routes: list[dict] = [{"receiver": NOBODY, "matchers": ['replayed="true"']}]
    routes += [_team_route(t, [f'team="{t.name}"']) for t in labelled]
    if business:
        children = [
            _team_route(t, [m for m in (t.province and f'province="{t.province}"',
                                         t.agency and f'agency="{t.agency}"') if m], cont=True)
            for t in narrowed
        ] + [_team_route(t, [], cont=True) for t in everywhere]
        # The business node's own receiver is used only when no child matches: no team covers
        # the alert's province and there is no team for all of them.
        fallback = everywhere[0] if everywhere else pipeline
        routes.append({"receiver": receiver_name(fallback, DEFAULT_SEVERITY), "matchers": ['province=~".+"'],
                       "group_by": BUSINESS_GROUP_BY, "routes": children})
    routes.append(_team_route(pipeline, []))
    return {
        "receiver": receiver_name(pipeline, DEFAULT_SEVERITY),
        "group_by": PIPELINE_GROUP_BY,
        "group_wait": duration(c.group_wait_s),
        "group_interval": duration(c.group_interval_s),
        "repeat_interval": duration(c.repeat_interval_s),
        "routes": routes,
    }


def inhibit_rules(c: Config) -> list[dict]:
    known = set(alert_names(c))
    missing = [name for name in WORKER_CAUSES + WORKER_SYMPTOMS if name not in known]
    assert not missing, f"inhibition names alerts the rules do not have: {missing}"
    return [
        {"source_matchers": [f'alertname=~"{_regex(WORKER_CAUSES)}"'],
         "target_matchers": [f'alertname=~"{_regex(WORKER_SYMPTOMS)}"'],
         "equal": ["job"]},
        {"source_matchers": ['severity="critical"'],
         "target_matchers": ['severity=~"warning|ticket"'],
         "equal": list(SAME_PROBLEM)},
    ]


def uses_telegram(teams) -> bool:
    return any("telegram" in t.channels for t in teams)


def alertmanager_config(c: Config, teams) -> dict:
    smtp = {"smtp_smarthost": c.smtp_smarthost, "smtp_from": c.smtp_from}
    if c.smtp_username:
        smtp |= {"smtp_auth_username": c.smtp_username, "smtp_auth_password_file": c.smtp_password_file}
    receivers = [{"name": NOBODY}] + [_receiver(c, t, s) for t in teams for s in SEVERITIES]
    return {
        "global": {"resolve_timeout": "5m", **smtp},
        "route": routing_tree(c, teams),
        "inhibit_rules": inhibit_rules(c),
        "receivers": receivers,
    }


def start_script(c: Config, teams) -> str:
    """Starts Alertmanager on the generated file, with the Telegram bot token put in from its file."""
    head = (
        "#!/bin/sh\n"
        "# Generated by opscentre (dashboards/alerts/alertmanager.py). Starts Alertmanager on\n"
        "# alertmanager.yml beside this script; arguments are passed on (--storage.path, ...).\n"
        "#   ALERTMANAGER_BIN          the binary (alertmanager; Debian: prometheus-alertmanager)\n"
        "set -eu\n"
        'here=$(cd "$(dirname "$0")" && pwd)\n'
        'bin=${ALERTMANAGER_BIN:-alertmanager}\n'
    )
    if not uses_telegram(teams):
        return head + 'exec "$bin" --config.file="$here/alertmanager.yml" "$@"\n'
    token_file = c.telegram_token_file
    return head + (
        "# Alertmanager 0.25 reads no Telegram bot token from a file (bot_token_file came in 0.26):\n"
        "# the generated file holds a placeholder, replaced here in a private copy, in\n"
        "#   ALERTMANAGER_RUNTIME_DIR  (default $TMPDIR/alertmanager; best on a tmpfs), mode 0700\n"
        f"token_file='{token_file}'\n"
        'token=$(cat "$token_file") || { echo "start.sh: cannot read the Telegram bot token file $token_file" >&2; exit 2; }\n'
        'token=$(printf %s "$token" | tr -d " \\t\\r\\n")\n'
        'case "$token" in\n'
        '  ""|*[!0-9A-Za-z:_-]*) echo "start.sh: $token_file does not hold a Telegram bot token" >&2; exit 2 ;;\n'
        "esac\n"
        'runtime=${ALERTMANAGER_RUNTIME_DIR:-${TMPDIR:-/tmp}/alertmanager}\n'
        "umask 077\n"
        'mkdir -p "$runtime"\n'
        f'sed "s/{TELEGRAM_TOKEN_PLACEHOLDER}/$token/g" "$here/alertmanager.yml" > "$runtime/alertmanager.yml"\n'
        'exec "$bin" --config.file="$runtime/alertmanager.yml" "$@"\n'
    )


def write(out_dir, config: Config, teams=None) -> list[Path]:
    """alertmanager/alertmanager.yml and alertmanager/start.sh under out_dir."""
    teams = load_teams(config.teams_file) if teams is None else teams
    out = Path(out_dir)
    start = out / START_FILE
    start.parent.mkdir(parents=True, exist_ok=True)
    start.write_text(start_script(config, teams), encoding="utf-8")
    start.chmod(0o755)
    return [write_yaml(out / CONFIG_FILE, alertmanager_config(config, teams)), start]


# -- who is paged for what (README "Paging"), read back from the routing tree ----------------------

_CHANNEL_NAMES = {"telegram_configs": "Telegram", "email_configs": "e-mail", "webhook_configs": "webhook"}


def _describe(route: dict, under_business: bool) -> str:
    matchers = route.get("matchers", [])
    if under_business:
        return "business alerts" + (" with " + ", ".join(f"`{m}`" for m in matchers) if matchers else ", all")
    return ", ".join(f"`{m}`" for m in matchers) if matchers else "any other alert"


def _by_severity(route: dict, receivers: dict) -> list[str]:
    chosen = {s: route["receiver"] for s in SEVERITIES}
    for child in route.get("routes", []):
        (matcher,) = child["matchers"]
        chosen[matcher.split('"')[1]] = child["receiver"]
    cells = []
    for severity in SEVERITIES:
        channels = [_CHANNEL_NAMES[k] for k in receivers[chosen[severity]] if k in _CHANNEL_NAMES]
        cells.append(f"{chosen[severity]} ({', '.join(channels)})" if channels else chosen[severity])
    return cells


def paging_table(c: Config, teams) -> str:
    """A Markdown table of the routing tree: which alerts reach which receivers, by severity."""
    config = alertmanager_config(c, teams)
    receivers = {r["name"]: r for r in config["receivers"]}
    lines = ["| alerts | critical | warning | ticket |", "|---|---|---|---|"]
    for route in config["route"]["routes"]:
        if route["receiver"] == NOBODY:
            lines.append(f"| {_describe(route, False)} (replays) | {NOBODY} | {NOBODY} | {NOBODY} |")
        elif route.get("group_by") == BUSINESS_GROUP_BY:
            for child in route["routes"]:
                lines.append(f"| {_describe(child, True)} | " + " | ".join(_by_severity(child, receivers)) + " |")
        else:
            lines.append(f"| {_describe(route, False)} | " + " | ".join(_by_severity(route, receivers)) + " |")
    return "\n".join(lines) + "\n"
