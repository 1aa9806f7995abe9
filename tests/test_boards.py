"""The Grafana boards, proven without Grafana (no package provides it here).

- every board validates against Grafana 11.6's dashboard schema (tests/schemas, from the
  foundation SDK's repository), in Vietnamese and in English;
- two builds give the same bytes; uids, time zone and refresh are the wall's;
- the provisioning tree parses and holds no secret, only ${VARIABLE} references;
- every PromQL expression runs on a real Prometheus 2.42 scraping the project's real metric
  definitions, without error, and returns series where the metrics exist;
- `dashboards push` against a small HTTP server standing in for Grafana's HTTP API (the endpoints
  grafana-client calls for health, plugins, folders, data sources, dashboards, alert rules and
  their groups, and the alerting settings): created, then unchanged on a second push, nothing
  written by --dry-run, one-line errors.

The ClickHouse queries of the boards run in tests/test_board_queries.py, the alert rules' file
and routing in tests/test_board_alert_rules.py.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.config import Config
from dashboards.grafana import alert_rules
from dashboards.grafana.boards import BOARDS
from dashboards.grafana.common import (
    FOLDERS,
    OPERATIONS,
    Board,
    bar_gauge_panel,
    board_url,
    clickhouse,
    clickhouse_variable,
    custom_variable,
    dashboard,
    link,
    render,
    stat_panel,
    steps,
    table_panel,
    timeseries_panel,
    value_texts,
    with_rows,
)
from dashboards.grafana.datasources import (
    ALERTMANAGER_UID,
    CLICKHOUSE_UID,
    PROMETHEUS_UID,
    datasources,
)
from dashboards.grafana.i18n import Texts
from dashboards.grafana.plugin import (
    CLICKHOUSE_PLUGIN_ID,
    CLICKHOUSE_PLUGIN_VERSION,
    ClickHouseQuery,
    Format,
    clickhouse_json_data,
)
from dashboards.grafana.provisioning import (
    GRAFANA_DASHBOARDS,
    MARKER,
    BuildError,
    build,
)
from dashboards.grafana.push import PushError, push
from opscentre.embedded import free_port
from opscentre.settings import Settings, SettingsError

SCHEMAS = Path(__file__).parent / "schemas"
VIETNAMESE = re.compile(r"[àáạảãâầấậẩẫăằắặẳẵèéẹẻẽêềếệểễìíịỉĩòóọỏõôồốộổỗơờớợởỡùúụủũưừứựửữỳýỵỷỹđ]", re.IGNORECASE)
TOKEN = "glsa_test_token"


def settings(**changes) -> Settings:
    return Settings().with_overrides(**changes)


def dashboard_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / "dashboard.jsonschema.json").read_text())
    # One relaxation, for the value Grafana itself writes: a threshold list's base step has the
    # value -Infinity, saved as null (validateFieldConfig in @grafana/data overwrites steps[0]
    # with -Infinity on load). The schema notes "Nulls currently appear here" yet types it number.
    # test_only_base_steps_are_null checks null appears nowhere else.
    schema["definitions"]["Threshold"]["properties"]["value"]["type"] = ["number", "null"]
    # And a second, for what the schema's generator narrowed: Grafana's dashboard kind (CUE) declares
    # an override's `DynamicConfigValue.value?: _` and `MatcherConfig.options?: _` (any value: a unit
    # is a string, decimals a number, byName's option the field's name), and so does the SDK's model
    # (typing.Optional[object]); the JSON schema renders `_` as an object. Only these two open up.
    schema["definitions"]["DynamicConfigValue"]["properties"]["value"] = {}
    schema["definitions"]["MatcherConfig"]["properties"]["options"] = {}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def panels(board_json: dict) -> list[dict]:
    found = []
    for panel in board_json.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def walk(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, (*path, index))
    else:
        yield path, value


@pytest.fixture(params=["vi", "en"])
def language(request):
    return request.param


@pytest.mark.parametrize("board", BOARDS, ids=lambda board: board.uid)
def test_every_board_validates_against_the_grafana_11_6_schema(board, language):
    board_json = render(board, settings(dashboard_language=language))
    errors = sorted(dashboard_validator().iter_errors(board_json), key=lambda error: list(error.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


def test_the_schema_rejects_what_grafana_would_reject():
    board_json = render(BOARDS[0], settings())
    validator = dashboard_validator()
    broken = copy.deepcopy(board_json)
    broken["panels"][1]["gridPos"] = {"h": "four", "w": 3, "x": 0, "y": 0}
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(board_json)
    broken["refresh"] = 30
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(board_json)
    broken["panels"][1]["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] = None
    assert validator.is_valid(broken)  # the relaxation itself; the next test keeps it to base steps


def sample_clickhouse_board(texts, _settings):
    """What a ClickHouse board is made of, from the helpers the business boards use."""
    province = custom_variable("province", texts("Province"), {"01": "Hà Nội", "79": "TP. Hồ Chí Minh"}, default="01")
    agency = clickhouse_variable("agency", texts("Agency"),
                                 "SELECT DISTINCT agency, agency FROM service_minute WHERE province = '${province}'")
    on_time = clickhouse("SELECT 0.97 AS on_time FROM system.one WHERE '${province}' != ''")
    per_minute = clickhouse("SELECT now() AS t, 1 AS n", Format.TIME_SERIES)
    board = dashboard("opscentre-sample", texts("Sample"), texts).with_variable(province).with_variable(agency)
    return with_rows(board, [(texts("Sample"), [
        stat_panel(texts("On time"), [on_time], unit="percentunit", thresholds=steps("red", (0.95, "green")),
                   mappings=value_texts({"1": ("100%", "green")})),
        timeseries_panel(texts("Received"), [per_minute], unit="short", axis_label=texts("Received")),
        bar_gauge_panel(texts("Agencies"), [on_time], unit="percentunit", max_value=1),
        table_panel(texts("Agencies"), [on_time, per_minute], columns={"agency": texts("Agency")})
        .links([link(texts("Agency"), board_url("opscentre-agency", carry=["province"],
                                                 set_values={"agency": "${__data.fields.agency}"}))]),
    ])])


SAMPLE = Board("opscentre-sample", OPERATIONS, sample_clickhouse_board, {
    "Province": "Tỉnh", "Agency": "Sở, ngành", "Sample": "Mẫu", "On time": "Đúng hạn", "Received": "Tiếp nhận",
    "Agencies": "Các sở, ngành"})


def test_the_helpers_for_clickhouse_boards_validate(language):
    board_json = render(SAMPLE, settings(dashboard_language=language))
    errors = list(dashboard_validator().iter_errors(board_json))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)
    variables = {variable["name"]: variable for variable in board_json["templating"]["list"]}
    assert variables["agency"]["query"].startswith("SELECT DISTINCT agency")
    assert variables["agency"]["datasource"] == {"type": CLICKHOUSE_PLUGIN_ID, "uid": CLICKHOUSE_UID}
    assert variables["province"]["current"]["value"] == "01"
    targets = [target for panel in panels(board_json) for target in panel.get("targets", [])]
    assert {target["pluginVersion"] for target in targets} == {CLICKHOUSE_PLUGIN_VERSION}
    assert {target["editorType"] for target in targets} == {"sql"}
    table = next(panel for panel in panels(board_json) if panel["type"] == "table")
    assert [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    assert table["links"][0]["url"] == ("/d/opscentre-agency?${__url_time_range}&${province:queryparam}"
                                        "&var-agency=${__data.fields.agency}")


@pytest.mark.parametrize("board", BOARDS, ids=lambda board: board.uid)
def test_only_base_steps_are_null(board):
    for path, value in walk(render(board, settings())):
        if value is None:
            # a panel's thresholds, or an override's (properties [{"id": "thresholds", "value": {...}}])
            assert path[-4] in ("thresholds", "value") and path[-3:] == ("steps", 0, "value"), path


@pytest.mark.parametrize("board", BOARDS, ids=lambda board: board.uid)
def test_wall_screen_defaults(board, language):
    board_json = render(board, settings(dashboard_language=language))
    assert board_json["uid"] == board.uid
    assert board_json["timezone"] == "Asia/Ho_Chi_Minh"
    assert board_json["refresh"] == "30s"
    assert board_json["editable"] is False
    assert "opscentre" in board_json["tags"]
    ids = [panel["id"] for panel in panels(board_json)]
    assert ids == list(range(1, len(ids) + 1))
    for panel in panels(board_json):
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert all(refs) and len(set(refs)) == len(refs), panel["title"]
        if panel["type"] in ("stat", "timeseries", "bargauge"):
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_uids_do_not_depend_on_the_language_or_the_build():
    uids = {board.uid for board in BOARDS}
    assert len(uids) == len(BOARDS)
    folder_uids = [folder.uid for folder in FOLDERS]
    assert len(set(folder_uids)) == len(folder_uids)
    for board in BOARDS:
        vietnamese, english = (render(board, settings(dashboard_language=lang)) for lang in ("vi", "en"))
        assert vietnamese["uid"] == english["uid"] == board.uid
        assert [p["id"] for p in panels(vietnamese)] == [p["id"] for p in panels(english)]
        for panel in panels(vietnamese):
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in (PROMETHEUS_UID, CLICKHOUSE_UID)


HUMAN_TEXT = {"title", "description", "axisLabel", "legendFormat", "label", "text", "renamePattern", "unit"}
SAME_IN_BOTH = {"ClickHouse", "Worker", "Topic", "p50", "p99", "{{topic}}", "{{event_type}}", "{{table}}",
                "{{topic}} / {{partition}}", "{{instance}}", "{{reason}}", "{{type}}", "p50 {{table}}",
                "p99 {{table}}", "s", "locale", "percentunit", "short"}


def human_texts(board_json: dict) -> dict:
    """The texts a person reads, by path; the choices of a variable are data (province names), not
    the board's words."""
    texts = {}
    for path, value in walk(board_json):
        key = path[-1]
        if path[:1] == ("templating",) and len(path) > 3 and path[3] in ("options", "current"):
            continue
        in_organize = len(path) >= 2 and path[-2] == "renameByName"
        if isinstance(value, str) and (key in HUMAN_TEXT or in_organize):
            texts[path] = value
    return texts


@pytest.mark.parametrize("board", BOARDS, ids=lambda board: board.uid)
def test_vietnamese_by_default_english_with_the_setting(board):
    vietnamese = human_texts(render(board, Settings()))
    english = human_texts(render(board, settings(dashboard_language="en")))
    assert vietnamese.keys() == english.keys()
    same = {english[path] for path in english if vietnamese[path] == english[path]}
    assert same <= SAME_IN_BOTH, f"not translated: {sorted(same - SAME_IN_BOTH)}"
    assert not [text for text in english.values() if VIETNAMESE.search(text)]
    assert VIETNAMESE.search(vietnamese[("title",)])


def test_language_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPSCENTRE_DASHBOARD_LANGUAGE", "en")
    assert render(BOARDS[0], Settings.from_env())["title"] == "Data pipeline"
    monkeypatch.delenv("OPSCENTRE_DASHBOARD_LANGUAGE")
    assert render(BOARDS[0], Settings.from_env())["title"] == "Đường ống dữ liệu"
    monkeypatch.setenv("OPSCENTRE_DASHBOARD_LANGUAGE", "fr")
    with pytest.raises(SettingsError, match="OPSCENTRE_DASHBOARD_LANGUAGE: one of vi, en"):
        Settings.from_env()


def test_a_text_without_vietnamese_fails_the_build():
    texts = Texts("vi", {"Known": "Đã biết"})
    assert texts("Known") == "Đã biết"
    with pytest.raises(KeyError, match="no Vietnamese text for 'Unknown'"):
        texts("Unknown")
    assert Texts("en")("Unknown") == "Unknown"


# The ClickHouse query type

def test_clickhouse_query_is_the_plugins_sql_query_model():
    query = clickhouse("SELECT 1", Format.TIME_SERIES).ref_id("A").build()
    assert query.to_json() == {
        "refId": "A", "editorType": "sql", "rawSql": "SELECT 1", "format": 0, "queryType": "timeseries",
        "pluginVersion": CLICKHOUSE_PLUGIN_VERSION, "datasource": query.datasource,
    }
    encoded = json.loads(json.dumps(query, cls=JSONEncoder))
    assert encoded["datasource"] == {"type": CLICKHOUSE_PLUGIN_ID, "uid": CLICKHOUSE_UID}
    assert json.loads(json.dumps(ClickHouseQuery.from_json(encoded), cls=JSONEncoder)) == encoded
    assert clickhouse("SELECT 1").build().to_json()["queryType"] == "table"


def test_a_board_with_clickhouse_queries_reads_back_through_the_sdk():
    board = dashboard_builders.Dashboard("t").uid("t").with_panel(
        stat_panel("n", [clickhouse("SELECT count() FROM service_events WHERE $__timeFilter(ts)")], unit="short"))
    written = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    model = Dashboard.from_json(written)
    target = model.panels[0].targets[0]
    assert isinstance(target, ClickHouseQuery)  # the registered variant, not the SDK's UnknownDataquery
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == written


@pytest.mark.parametrize("url, expected", [
    ("clickhouse://grafana@ch:9000/opscentre", {"host": "ch", "port": 9000, "protocol": "native", "secure": False,
                                                "username": "grafana", "defaultDatabase": "opscentre"}),
    ("clickhouses://ro@ch/db", {"port": 9440, "protocol": "native", "secure": True, "username": "ro"}),
    ("https://ch.example:8443/x", {"protocol": "http", "secure": True, "username": "default", "port": 8443}),
    ("http://ch", {"port": 8123, "defaultDatabase": "default"}),
])
def test_clickhouse_connection_settings(url, expected):
    json_data = clickhouse_json_data(url)
    assert {key: json_data[key] for key in expected} == expected
    assert json_data["version"] == CLICKHOUSE_PLUGIN_VERSION


@pytest.mark.parametrize("url, message", [
    ("clickhouse://grafana:secret@ch:9000/db", "the password goes in OPSCENTRE_GRAFANA_CLICKHOUSE_PASSWORD"),
    ("mysql://ch/db", "expected clickhouse|clickhouses|http|https://"),
])
def test_clickhouse_connection_refused(url, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        clickhouse_json_data(url)


# The provisioning tree

def opscentre(*args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPSCENTRE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "opscentre.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def tree(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def test_two_builds_are_byte_identical(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out, seed in ((first, "1"), (second, "2")):
        result = opscentre("dashboards", "build", "--out", str(out), env={"PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        assert f"files in {out}" in result.stdout
    assert tree(first) == tree(second)
    assert len(tree(first)) >= 4


SECRETS = {
    "OPSCENTRE_GRAFANA_CLICKHOUSE_PASSWORD": "canary-ch-password-7f3a",
    "OPSCENTRE_GRAFANA_TOKEN": "canary-token-91bd",
    "OPSCENTRE_CLICKHOUSE": "clickhouse://writer:canary-writer-password-22c1@ch:9000/opscentre",
    "OPSCENTRE_PSEUDONYM_KEY": "canary-pseudonym-key-5e0d",
}


def test_the_tree_parses_and_holds_no_secret(tmp_path):
    out = tmp_path / "out"
    result = opscentre("dashboards", "build", "--out", str(out), env=SECRETS)
    assert result.returncode == 0, result.stderr
    files = tree(out)
    for name, content in files.items():
        text = content.decode("utf-8")
        for secret in SECRETS.values():
            assert secret.split("@")[0].rsplit(":", 1)[-1] not in text, f"{name} holds a secret"

    sources = yaml.safe_load(files["grafana/provisioning/datasources/opscentre.yml"])
    assert sources["apiVersion"] == 1
    by_uid = {source["uid"]: source for source in sources["datasources"]}
    assert set(by_uid) == {CLICKHOUSE_UID, PROMETHEUS_UID, ALERTMANAGER_UID}
    assert by_uid[ALERTMANAGER_UID]["jsonData"] == {"implementation": "prometheus", "handleGrafanaManagedAlerts": True}
    assert by_uid[CLICKHOUSE_UID]["type"] == CLICKHOUSE_PLUGIN_ID
    assert by_uid[CLICKHOUSE_UID]["secureJsonData"] == {"password": "${OPSCENTRE_GRAFANA_CLICKHOUSE_PASSWORD}"}
    for source in sources["datasources"]:
        for path, value in walk(source):
            secret_like = any(word in str(part).lower() for part in path for word in ("password", "secret", "token"))
            if secret_like:
                assert path[0] == "secureJsonData" and re.fullmatch(r"\$\{OPSCENTRE_[A-Z0-9_]+\}", value), path

    providers = yaml.safe_load(files["grafana/provisioning/dashboards/opscentre.yml"])["providers"]
    boards_on_disk = {name for name in files if name.startswith("grafana/dashboards/")}
    served = set()
    for provider in providers:
        assert provider["type"] == "file" and provider["folderUid"] in {folder.uid for folder in FOLDERS}
        assert provider["options"]["path"] == f"{GRAFANA_DASHBOARDS}/{provider['folder']}"
        local = "grafana/dashboards/" + provider["folder"] + "/"
        served |= {name for name in boards_on_disk if name.startswith(local)}
    assert served == boards_on_disk == {f"grafana/dashboards/{_title(b.folder)}/{b.uid}.json" for b in BOARDS}
    for name in boards_on_disk:
        assert json.loads(files[name])["uid"] == Path(name).stem


def _title(folder) -> str:
    return Texts("vi")(folder.title)


def test_a_literal_dollar_is_escaped_for_grafana(tmp_path):
    written = build(tmp_path / "out", settings(grafana_prometheus="http://prom:9090/$web"))
    text = next(p for p in written if p.name == "opscentre.yml" and "datasources" in str(p)).read_text()
    assert "url: http://prom:9090/$$web" in text


def test_build_owns_its_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty and was not written by a build"):
        build(tmp_path, Settings())
    assert (tmp_path / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    build(out, Settings())
    assert (out / MARKER).exists() and (out / "grafana/dashboards/Vận hành hệ thống").is_dir()
    build(out, settings(dashboard_language="en"))  # the Vietnamese folder must not linger beside the English
    assert sorted(p.name for p in (out / "grafana/dashboards").iterdir()) == ["Information security", "Operations",
                                                                              "Platform"]
    assert not list(tmp_path.glob(".*building"))


def test_build_errors_are_one_line(tmp_path):
    (tmp_path / "x").write_text("")
    result = opscentre("dashboards", "build", "--out", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not empty and was not written by a build" in result.stderr


# PromQL on a real Prometheus

def _metric_definitions():
    """The project's metrics, re-declared in a registry of their own (the default one is shared),
    and a function that moves every one of them a little (called while Prometheus scrapes)."""
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

    import producers.batching  # noqa: F401  (declare the metrics)
    import sinks.alertmanager
    import sinks.clickhouse_sink  # noqa: F401
    import streams.app
    import streams.processor  # noqa: F401

    registry = CollectorRegistry()
    kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    moves = []
    for collector in list(REGISTRY._collector_to_names):
        name = getattr(collector, "_name", "")
        if not name.startswith("opscentre_") or getattr(collector, "_type", None) not in kinds:
            continue
        metric = kinds[collector._type](name, collector._documentation, collector._labelnames, registry=registry)
        child = metric.labels(*["false"] * len(collector._labelnames)) if collector._labelnames else metric
        moves.append({"counter": lambda child=child: child.inc(), "gauge": lambda child=child: child.set(time.time() - 5),
                      "histogram": lambda child=child: child.observe(0.3)}[collector._type])
    return registry, lambda: [move() for move in moves]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    if not shutil.which("prometheus"):
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    from prometheus_client import generate_latest, start_http_server

    registry, move = _metric_definitions()
    move()
    exposed = {line.split("{")[0].split(" ")[0] for line in generate_latest(registry).decode().splitlines()
               if line and not line.startswith("#")}
    metrics_port = free_port()
    metrics_server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def traffic():  # bounded: ends with the fixture
        while not stop.wait(0.1):
            move()

    mover = threading.Thread(target=traffic, daemon=True)
    mover.start()
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "opscentre-worker",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with open(directory / "prometheus.log", "w") as log:
            process = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while True:  # ready, and five scrapes in: enough samples for rate() over the test's interval
                    try:
                        samples = _query(base, "count_over_time(up[30s])")["data"]["result"]
                        if samples and float(samples[0]["value"][1]) >= 5:
                            break
                    except OSError:
                        pass
                    assert time.monotonic() < deadline, (directory / "prometheus.log").read_text()[-2000:]
                    time.sleep(0.5)
                yield base, {name.removesuffix("_created") for name in exposed} | {"up"}
            finally:
                process.terminate()
                process.wait(timeout=30)
    finally:
        stop.set()
        mover.join(timeout=5)
        metrics_server.shutdown()


def _query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400 with Prometheus's own error text
        return json.loads(exc.read())


def grafana_substitute(expr: str, board_json: dict) -> str:
    """Grafana's substitution before a query reaches Prometheus, for what the boards use:
    $__rate_interval (here four 1 s scrapes and more), and each variable at its All value."""
    expr = expr.replace("${__rate_interval}", "10s").replace("$__rate_interval", "10s")
    for variable in board_json.get("templating", {}).get("list", []):
        value = variable.get("allValue") or ".*"
        expr = expr.replace("${" + variable["name"] + "}", value).replace("$" + variable["name"], value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def prometheus_expressions():
    for board in BOARDS:
        board_json = render(board, settings())
        for panel in panels(board_json):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("uid") == PROMETHEUS_UID:
                    yield board.uid, panel["title"], target["expr"], board_json


def test_the_pipeline_board_reads_prometheus():
    assert len(list(prometheus_expressions())) >= 25


def test_every_promql_expression_runs_on_prometheus_2_42(prometheus):
    base, exposed = prometheus
    empty, not_yet_exported = [], set()
    for uid, title, expr, board_json in prometheus_expressions():
        answer = _query(base, grafana_substitute(expr, board_json))
        assert answer["status"] == "success", f"{uid} / {title}: {expr}: {answer.get('error')}"
        names = {name.removesuffix("_bucket") for name in re.findall(r"\b(opscentre_\w+|up)\b(?=\s*[{\[)])", expr)}
        wanted = {name if name in exposed else name + "_bucket" for name in names}
        missing = {name for name in names if name not in exposed and name + "_bucket" not in exposed}
        not_yet_exported |= missing
        values = [float(series["value"][1]) for series in answer["data"]["result"]]
        if not missing and wanted and (not values or any(math.isnan(value) for value in values)):
            empty.append(f"{title}: {expr} -> {values}")
    assert not empty, "queries on exported metrics returned no number:\n" + "\n".join(empty)
    # Metrics the board reads that no module here declares yet (added by other work): their
    # queries must still run, and the list must only shrink.
    assert not_yet_exported <= {"opscentre_stream_consumer_lag_seconds", "opscentre_stream_internal_errors_total"}


def test_variable_queries_run_on_prometheus(prometheus):
    base, _ = prometheus
    for board in BOARDS:
        for variable in render(board, settings())["templating"].get("list", []):
            if variable.get("datasource", {}).get("uid") != PROMETHEUS_UID:
                continue
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]).groups()
            url = f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric})
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.loads(response.read())
            assert answer["status"] == "success" and answer["data"], variable["name"]


# `dashboards push` against a stand-in for Grafana's HTTP API

class FakeGrafana:
    """Grafana cannot run here: this stands in for the parts of its HTTP API that push calls
    through grafana-client, with Grafana's status codes (401 without the token, 404 for a
    missing uid) and its habit of storing a dashboard with its own id and version."""

    def __init__(self, with_plugin: bool = True, plugin_version: str = CLICKHOUSE_PLUGIN_VERSION):
        self.folders: dict[str, dict] = {}
        self.datasources: dict[str, dict] = {}
        self.secrets: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.rules: dict[str, dict] = {}
        self.rule_groups: dict[tuple[str, str], int] = {}  # (folder uid, group) -> interval (s)
        self.admin_config: dict | None = None
        self.writes: list[tuple[str, str]] = []
        self.plugins = [{"id": "prometheus", "type": "datasource", "info": {"version": "11.6.0"}}]
        if with_plugin:
            self.plugins.append({"id": CLICKHOUSE_PLUGIN_ID, "type": "datasource", "info": {"version": plugin_version}})
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                path = urllib.parse.urlparse(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                if path == "/api/health":
                    return self._send(200, {"database": "ok", "version": "11.6.0"})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"message": "invalid API key"})
                if method != "GET":
                    fake.writes.append((method, path))
                status, answer = fake.route(method, path, body)
                self._send(status, answer)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def route(self, method, path, body):
        parts = path.strip("/").split("/")[1:]  # after "api"
        not_found = (404, {"message": "not found"})
        if parts == ["plugins"] and method == "GET":
            return 200, self.plugins
        if parts[0] == "folders":
            if method == "POST" and len(parts) == 1:
                folder = {"uid": body["uid"], "title": body["title"], "version": 1}
                self.folders[body["uid"]] = folder
                return 200, folder
            folder = self.folders.get(parts[1]) if len(parts) == 2 else None
            if folder is None:
                return not_found
            if method == "PUT":
                folder.update(title=body["title"], version=folder["version"] + 1)
            return 200, folder
        if parts[0] == "datasources":
            if method == "POST" and len(parts) == 1:
                return 200, self._save_datasource(body)
            if parts[1:2] == ["uid"] and parts[2] in self.datasources:
                if method == "PUT":
                    return 200, self._save_datasource(body)
                return 200, self.datasources[parts[2]]
            return not_found
        if parts[:3] == ["v1", "provisioning", "alert-rules"]:
            return self._alert_rule(method, parts[3] if len(parts) > 3 else None, body)
        if parts[:3] == ["v1", "provisioning", "folder"] and parts[4:5] == ["rule-groups"]:
            key = (parts[3], parts[5])
            if key not in self.rule_groups:
                return 404, {"message": "rule group does not exist"}
            if method == "PUT":
                self.rule_groups[key] = body["interval"]
            rules = [rule for rule in self.rules.values() if (rule["folderUID"], rule["ruleGroup"]) == key]
            return 200, {"title": key[1], "folderUid": key[0], "interval": self.rule_groups[key], "rules": rules}
        if parts == ["v1", "ngalert", "admin_config"]:
            if method == "POST":
                self.admin_config = body
                return 201, {"message": "admin configuration updated"}
            if self.admin_config is None:
                return 404, {"message": "no admin configuration available"}
            return 200, self.admin_config
        if parts == ["dashboards", "db"] and method == "POST":
            previous = self.dashboards.get(body["dashboard"]["uid"])
            stored = {**body["dashboard"], "id": 7, "version": previous["dashboard"]["version"] + 1 if previous else 1}
            self.dashboards[stored["uid"]] = {"dashboard": stored, "meta": {"folderUid": body["folderUid"],
                                                                            "provisioned": False}}
            return 200, {"status": "success", "uid": stored["uid"], "version": stored["version"]}
        if parts[:2] == ["dashboards", "uid"] and parts[2] in self.dashboards:
            return 200, self.dashboards[parts[2]]
        return not_found

    def _alert_rule(self, method, uid, body):
        # Grafana's alerting provisioning API: a rule made through it has provenance "api"; a new
        # rule makes its group, evaluated every minute until the group's interval is set.
        if method == "POST" and uid is None:
            if body.get("folderUID") not in self.folders:
                return 400, {"message": "folder does not exist"}
            stored = {**body, "id": len(self.rules) + 1, "provenance": "api", "updated": "2026-01-01T00:00:00Z"}
            self.rules[body["uid"]] = stored
            self.rule_groups.setdefault((body["folderUID"], body["ruleGroup"]), 60)
            return 201, stored
        if uid not in self.rules:
            return 404, {"message": "rule not found"}
        if method == "PUT":
            self.rules[uid] = {**self.rules[uid], **body}
        return 200, self.rules[uid]

    def _save_datasource(self, body):
        secrets = body.pop("secureJsonData", None) or {}
        self.secrets.setdefault(body["uid"], {}).update(secrets)
        stored = {**body, "id": 3, "secureJsonFields": {key: True for key in self.secrets[body["uid"]]}}
        self.datasources[body["uid"]] = stored
        return {"datasource": stored, "message": "Datasource saved"}


@pytest.fixture
def grafana():
    fake = FakeGrafana()
    yield fake
    fake.stop()


def push_settings(**changes):
    return settings(grafana_token=TOKEN, grafana_clickhouse_password="ch-password", **changes)


def run_push(grafana, dry_run=False, **changes):
    lines, notes = [], []
    push(grafana.url, push_settings(**changes), dry_run=dry_run, out=lines.append, warn=notes.append)
    return lines, notes


FOLDERS_USED = len({board.folder.uid for board in BOARDS})
RULES = alert_rules.rules(Config.from_settings(Settings()))
GROUPS = alert_rules.group_intervals()
PUSHED = FOLDERS_USED + 3 + len(BOARDS) + len(RULES) + len(GROUPS)  # and the alerting setting, updated


def test_push_creates_everything_then_changes_nothing(grafana):
    lines, notes = run_push(grafana)
    assert not notes
    assert lines[-1] == f"push: created {PUSHED}, updated 1, 0 unchanged"
    assert any(line.startswith("folder") and "opscentre-platform" in line and line.endswith("created") for line in lines)
    assert set(grafana.datasources) == {CLICKHOUSE_UID, PROMETHEUS_UID, ALERTMANAGER_UID}
    assert grafana.datasources[ALERTMANAGER_UID]["jsonData"]["handleGrafanaManagedAlerts"] is True
    assert grafana.admin_config == {"alertmanagersChoice": "external"}
    config = Config.from_settings(Settings())
    assert {uid: rule["title"] for uid, rule in grafana.rules.items()} == {rule.uid: rule.title for rule in RULES}
    for rule in RULES:
        stored = grafana.rules[rule.uid]
        assert {k: stored[k] for k in alert_rules.api_rule(rule, config)} == alert_rules.api_rule(rule, config)
        assert stored["folderUID"] == rule.folder.uid
    assert grafana.rule_groups == GROUPS
    assert grafana.secrets[CLICKHOUSE_UID] == {"password": "ch-password"}
    assert grafana.datasources[CLICKHOUSE_UID]["jsonData"] == datasources(Settings())[0].json_data
    for board in BOARDS:
        stored = grafana.dashboards[board.uid]
        assert {k: v for k, v in stored["dashboard"].items() if k not in ("id", "version")} == render(board, Settings())
        assert stored["meta"]["folderUid"] == board.folder.uid

    writes = len(grafana.writes)
    lines, _ = run_push(grafana)
    assert len(grafana.writes) == writes, "a second push wrote to Grafana"
    assert all(line.endswith("unchanged") for line in lines[:-1])
    assert lines[-1] == f"push: Grafana already matches the boards ({PUSHED + 1} unchanged), nothing to change"


def test_push_updates_only_what_differs(grafana):
    run_push(grafana)
    grafana.writes.clear()
    lines, _ = run_push(grafana, dashboard_language="en", grafana_prometheus="http://prometheus.internal:9090")
    assert "updated (url)" in next(line for line in lines if PROMETHEUS_UID in line)
    assert next(line for line in lines if CLICKHOUSE_UID in line).endswith("unchanged")
    assert "updated (was 'Vận hành hệ thống')" in next(line for line in lines if "opscentre-platform" in line)
    assert grafana.dashboards["opscentre-pipeline"]["dashboard"]["title"] == "Data pipeline"
    assert grafana.dashboards["opscentre-pipeline"]["dashboard"]["version"] == 2
    assert ("PUT", f"/api/datasources/uid/{PROMETHEUS_UID}") in grafana.writes
    assert ("PUT", f"/api/datasources/uid/{CLICKHOUSE_UID}") not in grafana.writes
    assert grafana.secrets[CLICKHOUSE_UID] == {"password": "ch-password"}


def test_dry_run_changes_nothing(grafana):
    lines, _ = run_push(grafana, dry_run=True)
    assert grafana.writes == [] and not grafana.folders and not grafana.datasources and not grafana.dashboards
    assert all("would be created" in line for line in lines[:-2])
    assert lines[-2].startswith("alerting") and lines[-2].endswith("would be updated (was 'all')")
    assert lines[-1].endswith("Grafana was not changed")
    run_push(grafana)
    lines, _ = run_push(grafana, dry_run=True, dashboard_language="en")
    assert grafana.dashboards["opscentre-pipeline"]["dashboard"]["title"] == "Đường ống dữ liệu"
    assert "would be updated" in next(line for line in lines if "opscentre-pipeline" in line)


def test_push_leaves_provisioned_objects_to_their_files(grafana):
    run_push(grafana)
    grafana.datasources[PROMETHEUS_UID]["readOnly"] = True
    with pytest.raises(PushError, match=f"data source {PROMETHEUS_UID} is provisioned from files .* differs \\(url\\)"):
        run_push(grafana, grafana_prometheus="http://elsewhere:9090")
    grafana.dashboards["opscentre-pipeline"]["meta"]["provisioned"] = True
    with pytest.raises(PushError, match="dashboard opscentre-pipeline is provisioned from files"):
        run_push(grafana, dashboard_language="en")
    lines, _ = run_push(grafana)  # provisioned and equal: nothing to do, no error
    assert lines[-1].startswith("push: Grafana already matches")


def test_push_updates_a_changed_rule_and_leaves_file_provisioned_rules_alone(grafana):
    run_push(grafana)
    grafana.writes.clear()
    lines, _ = run_push(grafana, target_on_time=0.9)
    assert "updated (data, annotations)" in next(line for line in lines if "opscentre-agency-on-time" in line)
    # the boards that colour by the target change too; of the rules, only that one
    rule_writes = [write for write in grafana.writes if "alert-rules" in write[1]]
    assert rule_writes == [("PUT", "/api/v1/provisioning/alert-rules/opscentre-agency-on-time")]
    threshold = grafana.rules["opscentre-agency-on-time"]["data"][2]["model"]["conditions"][0]["evaluator"]
    assert threshold == {"params": [0.9], "type": "lt"}
    grafana.rules["opscentre-agency-on-time"]["provenance"] = "file"
    with pytest.raises(PushError, match="alert rule opscentre-agency-on-time is provisioned from files"):
        run_push(grafana, target_on_time=0.85)
    grafana.rule_groups[("opscentre-operations", "opscentre-kpi")] = 60  # changed in Grafana
    lines, _ = run_push(grafana, target_on_time=0.9)
    assert "rule group opscentre-kpi" in next(line for line in lines if line.startswith("rule group") and "updated"
                                              in line)
    assert grafana.rule_groups[("opscentre-operations", "opscentre-kpi")] == 300


def test_push_notes_another_plugin_version():
    fake = FakeGrafana(plugin_version="4.11.0")
    try:
        _, notes = run_push(fake)
    finally:
        fake.stop()
    assert notes == [(f"note: Grafana has {CLICKHOUSE_PLUGIN_ID} 4.11.0; the boards are written for "
                      f"{CLICKHOUSE_PLUGIN_VERSION}")]


def push_cli(url, token=TOKEN, *extra):
    env = {"OPSCENTRE_GRAFANA_CLICKHOUSE_PASSWORD": "ch-password"}
    if token:
        env["OPSCENTRE_GRAFANA_TOKEN"] = token
    return opscentre("dashboards", "push", "--grafana", url, *extra, env=env)


def test_push_through_the_command_line(grafana):
    result = push_cli(grafana.url, TOKEN, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would be created" in result.stdout and grafana.writes == []
    result = push_cli(grafana.url)
    assert result.returncode == 0 and "push: created" in result.stdout


@pytest.mark.parametrize("case, message", [
    ("unreachable", "cannot reach Grafana at http://127.0.0.1:{port}: connection refused"),
    ("bad token", "Grafana at {url} rejected the token (401 Unauthorized)"),
    ("no token", "OPSCENTRE_GRAFANA_TOKEN is not set"),
    ("no plugin", (f"Grafana at {{url}} has no {CLICKHOUSE_PLUGIN_ID} plugin: install version "
                   f"{CLICKHOUSE_PLUGIN_VERSION}")),
])
def test_push_errors_are_one_line(case, message):
    fake = FakeGrafana(with_plugin=case != "no plugin")
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}" if case == "unreachable" else fake.url
        token = {"bad token": "wrong", "no token": None}.get(case, TOKEN)
        result = push_cli(url, token)
    finally:
        fake.stop()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("opscentre dashboards: ")
    assert message.format(port=port, url=fake.url) in result.stderr
    assert fake.writes == []


def test_the_default_province_is_one_of_the_list():
    with pytest.raises(SettingsError, match="OPSCENTRE_DASHBOARD_PROVINCE: '99' is not a code of the province list"):
        render(next(board for board in BOARDS if board.uid == "opscentre-province"), settings(dashboard_province="99"))
