"""Static checks of the container setup: docker-compose.yaml, Dockerfile, .env.example, the postgres init SQL.

No Docker engine is needed: the compose file is parsed with PyYAML (safe_load resolves the
``<<: *airflow-common`` merge keys the way compose does) and the Dockerfile is read as text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
REQUIREMENTS = ROOT / "requirements.txt"
CONSTRAINTS = ROOT / "constraints.txt"

# Long-running Airflow services and the `airflow <command>` each must run.
AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
}
AIRFLOW_SERVICES = [*AIRFLOW_COMMANDS, "airflow-init"]
REQUIRED_SERVICES = ["postgres", "redis", *AIRFLOW_SERVICES]

# What each service's healthcheck must probe.
HEALTHCHECK_PROBES = {
    "postgres": "pg_isready",
    "redis": "redis-cli ping",
    "airflow-apiserver": "http://localhost:8080/api/v2/version",
    "airflow-scheduler": "http://localhost:8974/health",
    "airflow-dag-processor": "airflow jobs check --job-type DagProcessorJob",
    "airflow-worker": "inspect ping",
    "airflow-triggerer": "airflow jobs check --job-type TriggererJob",
}

# Secrets that have no safe default: compose must refuse to start without them (${VAR:?message}).
REQUIRED_SECRETS = [
    "POSTGRES_PASSWORD",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "STORE_DB_URI",
    "SENDGRID_API_KEY",
    "REMARKETING_LINK_SECRET",
]
# Connection secrets only airflow-init needs (it stores them in the metadata DB).
INIT_ONLY_SECRETS = ["STORE_DB_URI", "SENDGRID_API_KEY", "SLACK_WEBHOOK_TOKEN", "ALERT_SMTP_URI"]
PROJECT_MOUNTS = {"dags": "/opt/airflow/dags", "plugins": "/opt/airflow/plugins", "include": "/opt/airflow/include"}

_VAR_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
_VAR_BARE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_PIN = re.compile(r"^\s*apache-airflow\s*==\s*([0-9][^\s;#]*)", re.IGNORECASE | re.MULTILINE)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose file has no services mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return _dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    assert ENV_EXAMPLE.is_file(), f"{ENV_EXAMPLE} is missing"
    return _parse_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def requirements_text() -> str:
    assert REQUIREMENTS.is_file(), f"{REQUIREMENTS} is missing (the Dockerfile copies it)"
    return REQUIREMENTS.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def constraints_text() -> str:
    assert CONSTRAINTS.is_file(), f"{CONSTRAINTS} is missing (the Dockerfile copies it)"
    return CONSTRAINTS.read_text(encoding="utf-8")


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, args = current.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(args.split())))
        current = ""
    if current.strip():
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
    return instructions


def _parse_env_file(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        assert sep, f".env line without '=': {raw!r}"
        values[key.strip()] = value.strip().strip("'\"")
    return values


def _strings(node):
    """Every string (mapping keys included) in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _interpolations(node) -> list[tuple[str, str]]:
    """(variable, modifier) for each compose interpolation; ``$$`` is an escaped literal ``$``."""
    found: list[tuple[str, str]] = []
    for text in _strings(node):
        text = text.replace("$$", "")
        found.extend((m.group(1), m.group(2)) for m in _VAR_BRACED.finditer(text))
        found.extend((name, "") for name in _VAR_BARE.findall(_VAR_BRACED.sub("", text)))
    return found


def _url(value: str):
    """urlsplit after replacing ``${VAR...}`` interpolations (their ``:?message`` would break parsing)."""
    return urlsplit(_VAR_BRACED.sub("placeholder", value))


def _command(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict) -> dict[str, str]:
    """Container target -> source, for short ("src:dst[:mode]") and long volume syntax."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, _, rest = volume.partition(":")
            mounts[rest.partition(":")[0]] = source
    return mounts


def _healthcheck_text(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return " ".join(test) if isinstance(test, list) else str(test or "")


def _airflow_pin(text: str) -> str:
    match = _PIN.search(text)
    assert match, "no 'apache-airflow==<version>' pin found"
    return match.group(1)


def _dockerfile_from(dockerfile: list[tuple[str, str]]) -> str:
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert froms, "Dockerfile has no FROM"
    return froms[-1].split()[0]


def _pip_install_runs(dockerfile: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(user, workdir, RUN arguments) of each RUN that calls pip install."""
    user, workdir, runs = "root", "/", []
    for keyword, args in dockerfile:
        if keyword == "USER":
            user = args.split(":")[0]
        elif keyword == "WORKDIR":
            workdir = args
        elif keyword == "RUN" and re.search(r"\bpip\s+install\b", args):
            runs.append((user, workdir, args))
    return runs


def _requirements_run(dockerfile: list[tuple[str, str]]) -> tuple[str, str, str]:
    runs = [run for run in _pip_install_runs(dockerfile) if re.search(r"-r\s+\S*requirements\.txt", run[2])]
    assert len(runs) == 1, f"expected exactly one 'pip install -r requirements.txt', found {len(runs)}"
    return runs[0]


# --------------------------------------------------------------------------- services and commands


def test_all_required_services_are_defined(services):
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"services missing from docker-compose.yaml: {missing}"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_builds_from_repo_dockerfile(services, name):
    build = services[name].get("build")
    assert build is not None, f"{name} does not build the project image"
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    assert context == ROOT, f"{name} build context {build.get('context')!r} is not the repository root"
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile == DOCKERFILE and dockerfile.is_file(), f"{name} builds from {dockerfile}, not {DOCKERFILE}"
    image = str(services[name].get("image", ""))
    assert not image.startswith("apache/airflow"), f"{name} would run the stock image {image!r}"


@pytest.mark.parametrize(("name", "command"), AIRFLOW_COMMANDS.items())
def test_airflow_service_runs_its_airflow_command(services, name, command):
    assert _command(services[name]).split() == command.split(), (
        f"{name} runs {_command(services[name])!r}, expected {command!r}"
    )


def test_airflow_init_migrates_metadata_db_through_the_image_entrypoint(services):
    init = services["airflow-init"]
    assert _env(init).get("_AIRFLOW_DB_MIGRATE", "").lower() == "true"
    assert "/entrypoint airflow version" in _command(init)


def _dag_pools() -> set[str]:
    """Every pool a DAG file asks for (``pool="..."``)."""
    return {m for path in (ROOT / "dags").glob("*.py") for m in re.findall(r"pool=[\"'](\w+)[\"']", path.read_text())}


def test_airflow_init_creates_every_pool_the_dags_use_after_migration(services):
    script = _command(services["airflow-init"])
    pools = _dag_pools()
    assert "remarketing_sends" in pools, "the send tasks' pool is gone from the DAGs: update this test"
    for pool in pools:
        match = re.search(rf"airflow pools set\s+['\"]?{pool}['\"]?\s+(\d+)", script)
        assert match, (
            f"airflow-init does not run 'airflow pools set {pool} <slots> ...' (a task in a missing pool never runs)"
        )
        assert int(match.group(1)) >= 1, f"{pool} pool needs at least one slot"
        assert script.index("/entrypoint airflow version") < match.start(), "pool is created before the DB migration"


def test_worker_keeps_dumb_init_setsid_off_for_warm_shutdown(services):
    assert _env(services["airflow-worker"]).get("DUMB_INIT_SETSID") == "0"


# --------------------------------------------------------------------------- healthchecks and ordering


@pytest.mark.parametrize(("name", "probe"), HEALTHCHECK_PROBES.items())
def test_service_has_healthcheck_probing_expected_target(services, name, probe):
    healthcheck = services[name].get("healthcheck") or {}
    assert not healthcheck.get("disable"), f"{name} healthcheck is disabled"
    text = _healthcheck_text(services[name])
    assert text and text.split()[0] in {"CMD", "CMD-SHELL"}, f"{name} has no runnable healthcheck: {text!r}"
    assert probe in text, f"{name} healthcheck {text!r} does not probe {probe!r}"


@pytest.mark.parametrize("name", list(HEALTHCHECK_PROBES))
def test_healthcheck_escapes_container_hostname(services, name):
    # "${HOSTNAME}" unescaped would be filled in by compose from the *host* environment.
    text = _healthcheck_text(services[name])
    assert "${HOSTNAME}" not in text.replace("$${HOSTNAME}", "")


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_waits_for_healthy_postgres_and_redis(services, name):
    depends_on = services[name].get("depends_on") or {}
    assert isinstance(depends_on, dict), f"{name} depends_on must use the long form with conditions"
    for dependency in ("postgres", "redis"):
        condition = (depends_on.get(dependency) or {}).get("condition")
        assert condition == "service_healthy", f"{name} -> {dependency}: condition {condition!r}"


@pytest.mark.parametrize("name", list(AIRFLOW_COMMANDS))
def test_long_running_airflow_service_waits_for_successful_init(services, name):
    condition = ((services[name].get("depends_on") or {}).get("airflow-init") or {}).get("condition")
    assert condition == "service_completed_successfully"


# --------------------------------------------------------------------------- executor and URLs


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_executor_is_celery_with_redis_broker_and_postgres_metadata(services, name):
    env = _env(services[name])
    assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor"

    broker = _url(env.get("AIRFLOW__CELERY__BROKER_URL", ""))
    assert broker.scheme == "redis" and broker.hostname == "redis" and "redis" in services

    postgres_env = _env(services["postgres"])
    for key, scheme in (
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2"),
        ("AIRFLOW__CELERY__RESULT_BACKEND", "db+postgresql"),
    ):
        url = _url(env.get(key, ""))
        assert url.scheme == scheme, f"{name} {key} scheme {url.scheme!r}"
        assert url.hostname == "postgres", f"{name} {key} host {url.hostname!r}"
        assert url.username == postgres_env.get("POSTGRES_USER"), f"{name} {key} user"
        assert url.path.lstrip("/") == postgres_env.get("POSTGRES_DB"), f"{name} {key} database"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_execution_api_server_url_points_at_apiserver_service_and_port(services, name):
    url = _url(_env(services[name]).get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", ""))
    assert url.scheme == "http" and url.hostname == "airflow-apiserver", url.geturl()
    container_ports = {int(str(p).split(":")[-1].split("/")[0]) for p in services["airflow-apiserver"].get("ports", [])}
    assert url.port in container_ports, f"port {url.port} is not the api-server's port {container_ports}"
    assert url.path == "/execution/"
    assert "airflow-apiserver" in services


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_jwt_secret_and_fernet_key_are_shared_by_every_airflow_service(services, name):
    env = _env(services[name])
    assert "${AIRFLOW__API_AUTH__JWT_SECRET" in env.get("AIRFLOW__API_AUTH__JWT_SECRET", "")
    assert "${AIRFLOW__CORE__FERNET_KEY" in env.get("AIRFLOW__CORE__FERNET_KEY", "")


# --------------------------------------------------------------------------- mounts, data, connections


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
@pytest.mark.parametrize(("folder", "target"), PROJECT_MOUNTS.items())
def test_project_folder_is_mounted(services, name, folder, target):
    mounts = _mounts(services[name])
    assert target in mounts, f"{name} does not mount anything at {target}"
    source = (ROOT / mounts[target]).resolve()
    assert source == ROOT / folder, f"{name} mounts {mounts[target]!r} at {target}, expected ./{folder}"


def test_mounted_include_holds_package_and_markets_file(services):
    source = ROOT / _mounts(services["airflow-worker"])["/opt/airflow/include"]
    assert (source / "remarketing").is_dir()
    assert (source / "markets.yaml").is_file()


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_remarketing_data_base_is_a_mounted_local_path(services, name):
    env = _env(services[name])
    base = _url(env.get("REMARKETING_DATA_BASE", ""))
    assert base.scheme == "file", f"REMARKETING_DATA_BASE {base.geturl()!r} is not a file:// URL"
    assert base.path in _mounts(services[name]), f"{base.path} is not mounted, run data would stay in the container"


def _code_conn_ids() -> dict[str, str]:
    """Connection ids the package reads (``..._CONN_ID = "..."`` constants), by constant name."""
    found = {}
    for path in (ROOT / "include" / "remarketing").rglob("*.py"):
        found.update(dict(re.findall(r"^(\w*CONN_ID)\s*=\s*\"(\w+)\"", path.read_text(), re.MULTILINE)))
    return found


def _run_init_connection_script(services, tmp_path, env: dict[str, str]) -> tuple[dict, dict]:
    """Run airflow-init's embedded Python (the heredoc) with ``env``; return (connections, variables)."""
    import subprocess
    import sys

    script = _command(services["airflow-init"])
    match = re.search(r"python - <<'PY'\n(.*?)\nPY\n", script, re.DOTALL)
    assert match, "airflow-init has no embedded Python (python - <<'PY' ... PY) creating the connections"
    code = match.group(1).replace("/tmp/", f"{tmp_path}/")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "/entrypoint airflow connections import --overwrite /tmp/connections.json" in script
    assert "variables import" in script and "/tmp/variables.json" in script
    assert script.index("/entrypoint airflow version") < script.index("connections import"), "before migration"
    connections = json.loads((tmp_path / "connections.json").read_text())
    variables = json.loads((tmp_path / "variables.json").read_text())
    return connections, variables


def test_airflow_init_creates_every_connection_the_code_reads(services, tmp_path):
    from airflow.secrets.local_filesystem import load_connections_dict

    init_env = _env(services["airflow-init"])
    env = {
        "STORE_DB_URI": "mysql://readonly:s3cr%40t@shop-db:3306/shop",
        "REMARKETING_DB_URI": _VAR_BRACED.sub("pw", init_env["REMARKETING_DB_URI"]),
        "SENDGRID_API_KEY": "SG.key",
        "PATH": "/usr/bin:/bin",
    }
    connections, variables = _run_init_connection_script(services, tmp_path, env)
    (tmp_path / "connections.json").write_text(json.dumps(connections))
    parsed = load_connections_dict(str(tmp_path / "connections.json"))  # Airflow's own reader
    required = {
        v for k, v in _code_conn_ids().items() if k in ("STORE_CONN_ID", "REMARKETING_CONN_ID", "SENDGRID_CONN_ID")
    }
    assert required == {"store_db", "remarketing_db", "sendgrid_default"}
    assert set(parsed) == required, "alert channels stay off while their .env values are empty"
    assert (parsed["store_db"].conn_type, parsed["store_db"].host, parsed["store_db"].password) == (
        "mysql",
        "shop-db",
        "s3cr@t",
    )
    assert (parsed["remarketing_db"].conn_type, parsed["remarketing_db"].host) == ("postgres", "postgres")
    assert parsed["remarketing_db"].schema == "remarketing"
    assert (parsed["sendgrid_default"].conn_type, parsed["sendgrid_default"].password) == ("sendgrid", "SG.key")
    assert variables == {"remarketing_alert_emails": ""}


def test_airflow_init_creates_the_alert_channels_when_configured(services, tmp_path):
    from airflow.secrets.local_filesystem import load_connections_dict

    from remarketing.platform.notify import ALERT_EMAILS_VARIABLE, SLACK_CONN_ID, SMTP_CONN_ID

    env = {
        "STORE_DB_URI": "postgresql://u:p@shop/shop",
        "REMARKETING_DB_URI": "postgresql://u:p@postgres/remarketing",
        "SENDGRID_API_KEY": "SG.key",
        "SLACK_WEBHOOK_TOKEN": "T0/B0/xyz",
        "ALERT_SMTP_URI": "smtp://alerts:pw@smtp.example.com:587?from_email=alerts%40example.com",
        "ALERT_EMAILS": "ops@example.com",
    }
    connections, variables = _run_init_connection_script(services, tmp_path, env)
    (tmp_path / "connections.json").write_text(json.dumps(connections))
    parsed = load_connections_dict(str(tmp_path / "connections.json"))
    assert parsed[SLACK_CONN_ID].conn_type == "slackwebhook" and parsed[SLACK_CONN_ID].password == "T0/B0/xyz"
    assert parsed[SMTP_CONN_ID].conn_type == "smtp" and parsed[SMTP_CONN_ID].port == 587
    assert parsed[SMTP_CONN_ID].extra_dejson["from_email"] == "alerts@example.com"
    assert variables == {ALERT_EMAILS_VARIABLE: "ops@example.com"}


@pytest.mark.parametrize("name", list(AIRFLOW_COMMANDS))
def test_connection_secrets_stay_out_of_long_running_services(services, name):
    env = _env(services[name])
    leaked = [key for key in INIT_ONLY_SECRETS if key in env]
    leaked += [key for key in env if key.startswith("AIRFLOW_CONN_")]
    assert not leaked, f"{name} gets {leaked}; only airflow-init needs them (it stores them encrypted)"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_tasks_send_through_sendgrid_with_signed_links(services, name):
    env = _env(services[name])
    assert env.get("REMARKETING_TRANSPORT") == "sendgrid", "production mail goes through SendGrid, not the outbox"
    assert "${REMARKETING_LINK_SECRET:?" in env.get("REMARKETING_LINK_SECRET", "")


def test_notifier_providers_are_required(requirements_text):
    for provider in ("apache-airflow-providers-slack", "apache-airflow-providers-smtp"):
        assert re.search(rf"^{provider}==", requirements_text, re.MULTILINE), f"{provider} is not pinned"


def test_remarketing_db_connection_targets_database_created_by_postgres_init(compose, services):
    url = _url(_env(services["airflow-init"])["REMARKETING_DB_URI"])
    assert url.scheme in {"postgresql", "postgres"} and url.hostname == "postgres"
    database = url.path.lstrip("/")
    assert database and database != _env(services["postgres"]).get("POSTGRES_DB"), "state DB must not be Airflow's DB"

    init_source = _mounts(services["postgres"]).get("/docker-entrypoint-initdb.d")
    assert init_source, "postgres does not mount an init directory at /docker-entrypoint-initdb.d"
    init_dir = ROOT / init_source
    scripts = sorted(init_dir.glob("*.sql")) + sorted(init_dir.glob("*.sh"))
    assert scripts, f"no init scripts in {init_dir}"
    sql = "\n".join(p.read_text(encoding="utf-8") for p in scripts)
    assert re.search(rf"CREATE\s+DATABASE\s+\"?{re.escape(database)}\"?[\s;]", sql, re.IGNORECASE), (
        f"no init script creates database {database!r}"
    )


# --------------------------------------------------------------------------- .env.example


def test_env_example_defines_every_variable_the_compose_file_interpolates(compose, env_example):
    referenced = {name for name, _ in _interpolations(compose)}
    missing = sorted(referenced - env_example.keys())
    assert not missing, f"interpolated in docker-compose.yaml but not in .env.example: {missing}"


def test_env_example_has_no_variables_the_compose_file_does_not_use(compose, env_example):
    referenced = {name for name, _ in _interpolations(compose)}
    stale = sorted(env_example.keys() - referenced)
    assert not stale, f"defined in .env.example but unused by docker-compose.yaml: {stale}"


@pytest.mark.parametrize("variable", REQUIRED_SECRETS)
def test_required_secret_fails_fast_when_unset(compose, env_example, variable):
    modifiers = [modifier for name, modifier in _interpolations(compose) if name == variable]
    assert modifiers, f"{variable} is never used"
    assert all(m.startswith((":?", "?")) for m in modifiers), f"{variable} has a reference without ':?': {modifiers}"
    assert env_example.get(variable), f"{variable} needs a placeholder value in .env.example"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_is_slim_image_with_requirements_airflow_version_and_python_3_11(dockerfile, requirements_text):
    image = _dockerfile_from(dockerfile)
    match = re.fullmatch(r"apache/airflow:(slim-)?(\d+\.\d+\.\d+)-python(\d+\.\d+)", image)
    assert match, f"FROM {image!r} is not apache/airflow:[slim-]<version>-python<X.Y>"
    assert match.group(1), f"FROM {image!r} is not the slim image"
    assert match.group(2) == _airflow_pin(requirements_text), "Dockerfile Airflow version != requirements.txt pin"
    assert match.group(3) == "3.11"


def test_dockerfile_installs_requirements_with_constraints_as_airflow_keeping_airflow_pinned(dockerfile):
    copied = " ".join(args for keyword, args in dockerfile if keyword in {"COPY", "ADD"})
    assert "requirements.txt" in copied and "constraints.txt" in copied
    user, _, run = _requirements_run(dockerfile)
    assert user == "airflow", f"pip install runs as {user!r}; the official image requires the airflow user"
    assert re.search(r"-c\s+\S*constraints\.txt", run), "requirements are installed without -c constraints.txt"
    assert re.search(r"apache-airflow(\[[\w,-]+\])?==\$\{?AIRFLOW_VERSION\}?", run), "Airflow is not kept pinned"
    assert "--no-cache-dir" in run


def test_dockerfile_installs_mysqlclient_build_dependencies_as_root_then_drops_to_airflow(dockerfile):
    user, apt_runs = "root", []
    for keyword, args in dockerfile:
        if keyword == "USER":
            user = args.split(":")[0]
        elif keyword == "RUN" and "apt-get install" in args:
            apt_runs.append((user, args))
    assert apt_runs, "no apt-get install for the mysqlclient build"
    assert all(u in {"root", "0"} for u, _ in apt_runs)
    packages = " ".join(args for _, args in apt_runs)
    for package in ("pkg-config", "build-essential"):
        assert package in packages
    assert "default-libmysqlclient-dev" in packages or "libmariadb-dev" in packages
    assert user == "airflow", f"image ends as user {user!r}, not airflow"


def test_dockerfile_makes_remarketing_package_importable_next_to_markets_yaml(dockerfile):
    copies = [args for keyword, args in dockerfile if keyword in {"COPY", "ADD"}]
    assert any(re.search(r"\binclude/?\s+/opt/airflow/include/?$", args) for args in copies), (
        "include/ is not copied to /opt/airflow/include"
    )
    assert any("pyproject.toml" in args for args in copies)
    editable = [
        (workdir, run)
        for _, workdir, run in _pip_install_runs(dockerfile)
        if re.search(r"-e\s+(/opt/airflow/?|\.)(\s|$)", run)
    ]
    pythonpath = any(
        keyword == "ENV" and "PYTHONPATH" in args and "/opt/airflow/include" in args for keyword, args in dockerfile
    )
    assert editable or pythonpath, "package is neither installed editable from /opt/airflow nor on PYTHONPATH"
    for workdir, run in editable:
        assert "--no-deps" in run
        assert "-e /opt/airflow" in run or workdir.rstrip("/") == "/opt/airflow"


def test_image_provides_celery_executor(dockerfile, requirements_text):
    _, _, run = _requirements_run(dockerfile)
    extra = re.search(r"apache-airflow\[[^\]]*\bcelery\b[^\]]*\]", run)
    provider = re.search(r"^\s*apache-airflow-providers-celery\b", requirements_text, re.MULTILINE)
    assert extra or provider, "CeleryExecutor needs apache-airflow-providers-celery (the slim image has none)"


def test_constraints_pin_same_airflow_and_hold_no_editable_or_local_entries(requirements_text, constraints_text):
    assert _airflow_pin(constraints_text) == _airflow_pin(requirements_text)
    bad = [
        line
        for line in constraints_text.splitlines()
        if line.strip().startswith(("-e", "--editable")) or re.search(r"@\s*file:|^\s*[./]", line)
    ]
    # pip refuses editable constraints; `pip freeze --exclude-editable` leaves the project out.
    assert not bad, f"constraints.txt entries pip cannot use as constraints: {bad}"
