"""The production topology without Docker: Airflow on PostgreSQL metadata with the CeleryExecutor.

What docker-compose.yaml runs in containers, started here as plain processes on this machine, so
CI can run DAGs through the real thing: a fresh PostgreSQL database for Airflow's metadata, the
machine's Redis as the Celery broker, PostgreSQL as the Celery result backend, ``airflow db
migrate``, the project's pool and connections (what compose's airflow-init does), then the
api-server (on a free port), scheduler, dag-processor and one Celery worker. Each process gets
its own process group and a log file; leaving the context stops every process it started (and
every task process those started, whatever group it moved to) and drops the database.

Each stack listens on its own Celery queue, so stacks sharing one Redis never take each other's
tasks. Usage from Python::

    with celery_stack(connections={"store_db": conn_json}, env={...}) as stack:
        token = stack.token()          # a JWT for the REST API (admin)
        ...                            # stack.url is the api-server

or from a shell, until Ctrl-C: ``python scripts/celery_stack.py`` (prints the URL and password).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("REMARKETING_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("REMARKETING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The pool every send task runs in (dags/cart_recovery.py: pool="remarketing_sends"); same as the demo's.
SEND_POOL = {
    "remarketing_sends": {"slots": 4, "description": "Send tasks running at once (bounds SendGrid concurrency)"}
}
SERVICES = ("api-server", "scheduler", "dag-processor", "celery-worker")
ADMIN = "admin"


class StackError(RuntimeError):
    """The stack could not start; the message names the step and the log file to read."""


@dataclass
class Stack:
    """A running stack: where it listens, where it logs, what it started."""

    url: str
    home: Path
    logs: Path
    database: str
    queue: str
    admin_password: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    stopped_pids: set[int] = field(default_factory=set)
    startup_seconds: float = 0.0

    def token(self) -> str:
        """A JWT for the REST API, from the simple auth manager's login endpoint."""
        import requests

        response = requests.post(
            f"{self.url}/auth/token", json={"username": ADMIN, "password": self.admin_password}, timeout=30
        )
        if response.status_code not in (200, 201):
            raise StackError(f"login failed with HTTP {response.status_code}; see {self.logs / 'api-server.log'}")
        return response.json()["access_token"]

    def check_alive(self) -> None:
        """Raise, naming the service and its log, if a service process has exited."""
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise StackError(f"{name} exited with code {code}:\n{log_tail(self.logs / f'{name}.log')}")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_services(pg_admin_url: str, broker_url: str) -> None:
    import redis
    import sqlalchemy as sa

    try:
        redis.Redis.from_url(broker_url, socket_connect_timeout=5).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no broker
        raise StackError(f"Redis (Celery broker) is not reachable at {broker_url}: {exc}") from exc
    engine = sa.create_engine(pg_admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        raise StackError(f"PostgreSQL is not reachable: {str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()


@contextmanager
def _metadata_database(pg_admin_url: str) -> Iterator[tuple[str, str]]:
    """A new PostgreSQL database for Airflow's metadata, dropped on exit: (name, SQLAlchemy URL)."""
    import sqlalchemy as sa

    name = f"rmk_stack_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(pg_admin_url).set(drivername="postgresql+psycopg2", database=name)
    try:
        yield name, url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def database_exists(name: str, pg_admin_url: str = PG_ADMIN_URL) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_admin_url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar())
    finally:
        engine.dispose()


def stack_env(
    *, home: Path, metadata_url: str, broker_url: str, port: int, queue: str, dags_folder: Path, extra: dict[str, str]
) -> dict[str, str]:
    """The environment every stack process shares; the caller's Airflow settings are not inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
    result_backend = "db+" + metadata_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP": r"(airflow|remarketing)\..*",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
            # A queue of our own: stacks (and anything else) sharing the Redis never steal tasks.
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            # Runs come from the REST API only: no scheduled runs racing the ones a test triggers.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            # The worker serves task logs to the api-server; a free port, not 8793, so stacks can coexist.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "GX_ANALYTICS_ENABLED": "False",
            # Airflow components spawn `airflow` by name: the venv's bin must come first.
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(extra)
    return env


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _airflow(args: list[str], *, env: dict[str, str], log: Path, timeout: float) -> None:
    """Run one airflow CLI command to completion, output in ``log``; raise with its tail on failure."""
    with log.open("w") as handle:
        try:
            result = subprocess.run(
                [str(BIN / "airflow"), *args],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"airflow {' '.join(args[:2])} timed out after {timeout}s; log: {log}") from exc
    if result.returncode != 0:
        raise StackError(f"airflow {' '.join(args[:2])} failed (exit {result.returncode}):\n{log_tail(log)}")


def _init(env: dict[str, str], logs: Path, connections: dict[str, str], pools: dict[str, dict]) -> None:
    """What compose's airflow-init does: migrate, then the project's pools and connections."""
    _airflow(["db", "migrate"], env=env, log=logs / "db-migrate.log", timeout=600)
    home = Path(env["AIRFLOW_HOME"])
    pool_file = home / "pools.json"
    pool_file.write_text(json.dumps({name: {**p, "include_deferred": False} for name, p in pools.items()}))
    _airflow(["pools", "import", str(pool_file)], env=env, log=logs / "pools.log", timeout=300)
    if connections:
        conn_file = home / "connections.json"
        conn_file.write_text(json.dumps({cid: json.loads(value) for cid, value in connections.items()}))
        try:
            _airflow(["connections", "import", str(conn_file)], env=env, log=logs / "connections.log", timeout=300)
        finally:
            conn_file.unlink()  # it holds passwords


def _start(name: str, args: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    handle = (logs / f"{name}.log").open("w")
    try:
        return subprocess.Popen(
            [str(BIN / "airflow"), *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,  # its own process group, so stopping it takes its children along
        )
    finally:
        handle.close()


def _wait_healthy(stack: Stack, timeout: float) -> None:
    """Until the api-server answers and reports the scheduler and dag-processor healthy, and the worker is ready.

    Only the services the stack started are waited for.
    """
    import requests

    deadline = time.monotonic() + timeout
    last = "no answer yet"
    worker_log = stack.logs / "celery-worker.log"
    parts = [p for p in ("scheduler", "dag_processor") if p.replace("_", "-") in stack.processes]
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            health = requests.get(f"{stack.url}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError) as exc:
            last = f"api-server: {exc.__class__.__name__}"
        else:
            states = {part: (health.get(part) or {}).get("status") for part in parts}
            worker_ready = "celery-worker" not in stack.processes or (
                worker_log.exists() and " ready." in worker_log.read_text(errors="replace")
            )
            if all(s == "healthy" for s in states.values()) and worker_ready:
                return
            last = f"{states}, celery worker ready: {worker_ready}"
        time.sleep(1)
    raise StackError(f"the stack was not healthy after {timeout:.0f}s ({last}); logs in {stack.logs}")


def _descendants(pids: list[int]) -> list:
    import psutil

    found = []
    for pid in pids:
        try:
            found.extend(psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def stop(stack: Stack, grace: float = 20.0) -> set[int]:
    """SIGTERM every process group the stack started (and every descendant's), then SIGKILL what is left."""
    import psutil

    roots = [p.pid for p in stack.processes.values()]
    procs = [psutil.Process(pid) for pid in roots if psutil.pid_exists(pid)] + _descendants(roots)
    groups: set[int] = set()
    for proc in procs:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            continue
    groups.discard(os.getpgrp())  # never our own group
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive + _descendants([p.pid for p in alive]):
        try:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    for process in stack.processes.values():
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
    stack.stopped_pids = {proc.pid for proc in procs}
    return stack.stopped_pids


def processes_of(home: Path) -> list[int]:
    """Live processes whose environment has this stack's AIRFLOW_HOME: what a leak would look like."""
    import psutil

    mine = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AIRFLOW_HOME") == str(home):
                mine.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return mine


@contextmanager
def celery_stack(
    *,
    connections: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    pools: dict[str, dict] | None = None,
    dags_folder: Path = ROOT / "dags",
    logs: Path | None = None,
    pg_admin_url: str = PG_ADMIN_URL,
    broker_url: str = BROKER_URL,
    start_timeout: float = 180.0,
    keep_home: bool = False,
    services: tuple[str, ...] = SERVICES,
) -> Iterator[Stack]:
    """Start the whole stack; yield it running; stop everything and drop its database on exit.

    ``connections``: conn id -> Airflow connection JSON, stored in the metadata DB (as airflow-init
    would). ``env``: extra environment for every process (AIRFLOW_CONN_*, REMARKETING_*...).
    ``logs``: where the service logs go (default: a folder in the stack's AIRFLOW_HOME, kept only
    with ``keep_home``). ``services``: which of ``SERVICES`` to start (all by default; the
    Remarketing page test needs only the api-server). Raises StackError when a service is
    missing or a step fails.
    """
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}; known: {', '.join(SERVICES)}")
    started = time.perf_counter()
    _check_services(pg_admin_url, broker_url)
    home = Path(tempfile.mkdtemp(prefix="rmk-stack-home-"))
    logs = Path(logs) if logs else home / "stack-logs"
    logs.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({ADMIN: password}))
    port = free_port()
    queue = f"rmk_{uuid.uuid4().hex[:10]}"
    with ExitStack() as cleanup:
        if not keep_home:
            cleanup.callback(shutil.rmtree, home, True)
        database, metadata_url = cleanup.enter_context(_metadata_database(pg_admin_url))
        full_env = stack_env(
            home=home,
            metadata_url=metadata_url,
            broker_url=broker_url,
            port=port,
            queue=queue,
            dags_folder=dags_folder,
            extra=dict(env or {}),
        )
        stack = Stack(
            url=f"http://127.0.0.1:{port}",
            home=home,
            logs=logs,
            database=database,
            queue=queue,
            admin_password=password,
            env=full_env,
        )
        _init(full_env, logs, dict(connections or {}), SEND_POOL if pools is None else pools)
        cleanup.callback(stop, stack)
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "celery-worker": [
                "celery",
                "worker",
                "--queues",
                queue,
                "--concurrency",
                full_env["AIRFLOW__CELERY__WORKER_CONCURRENCY"],
                "--celery-hostname",
                f"{queue}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
        }
        for name in services:
            stack.processes[name] = _start(name, commands[name], full_env, logs)
        _wait_healthy(stack, start_timeout)
        stack.startup_seconds = time.perf_counter() - started
        yield stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=ROOT / "stack-logs", help="folder for the service logs")
    args = parser.parse_args()
    with celery_stack(logs=args.logs) as stack:
        print(f"Airflow (CeleryExecutor) up in {stack.startup_seconds:.0f}s at {stack.url}")
        print(f"  user {ADMIN}, password {stack.admin_password}; logs in {stack.logs}; Ctrl-C stops everything")
        try:
            while True:
                stack.check_alive()
                time.sleep(2)
        except KeyboardInterrupt:
            print("stopping")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
