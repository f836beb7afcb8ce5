"""The `temps` commands against a fake HTTP API (httpx.MockTransport): request bodies, name → id
resolution, output formats, one-line errors and exit codes, and `temps run`'s child process."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from temps_cli.client import ExitCode, TempsClient
from temps_cli.main import app
from temps_cli.runner import CA_ADDED, expand_arguments, with_ca_files
from typer.testing import CliRunner, Result

SID = "0b6c2b0e-7a43-4a1e-9e3c-1d2f3a4b5c6d"
PID = "5f0e9d8c-1b2a-4c3d-8e7f-6a5b4c3d2e1f"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
PRIVATE_URL = "postgresql://shop_app:pw@temps-postgres-db1:5432/shop_production?sslmode=require"
NAME = re.compile(r"^[a-z][a-z0-9-]{1,37}$")


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


class FakeApi:
    """The API's routes the CLI uses, answering the shapes of API.md."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.service: dict[str, Any] = {
            "id": SID,
            "name": "db1",
            "service_type": "postgres",
            "version": "17",
            "status": "operational",
            "status_reason": None,
            "parameters": {"replicas": 0},
            "resources": {},
            "connection_info": {
                "host": "temps-postgres-db1",
                "port": 5432,
                "local_host": "127.0.0.1",
                "local_port": 21001,
                "replicas": [],
            },
            "generation": 1,
            "observed_generation": 1,
        }
        self.project = {"id": PID, "name": "shop", "environments": ["production"]}
        self.linked = True
        self.links = [
            {
                "project_id": PID,
                "environment": "production",
                "status": "active",
                "username": "shop_app",
                "created_at": "2025-01-01T00:00:00+00:00",
            }
        ]
        self.can_reveal = True
        self.routes: list[tuple[str, str, Callable[[httpx.Request], httpx.Response]]] = [
            ("GET", "/api/external-services", lambda r: self._ok([self.service])),
            ("POST", "/api/external-services", self._create),
            ("GET", f"/api/external-services/{SID}", lambda r: self._ok(self.service)),
            (
                "POST",
                f"/api/external-services/{SID}/(start|stop|retry|rotate-credentials)",
                self._op,
            ),
            ("DELETE", f"/api/external-services/{SID}", self._delete),
            ("GET", f"/api/external-services/{SID}/credentials", self._credentials),
            ("GET", "/api/projects", lambda r: self._ok([self.project])),
            ("GET", f"/api/projects/{PID}", lambda r: self._ok(self.project)),
            ("POST", f"/api/external-services/{SID}/projects", self._link),
            ("GET", f"/api/external-services/{SID}/projects", lambda r: self._ok(self.links)),
            ("DELETE", f"/api/external-services/{SID}/projects/{PID}", self._unlink),
            ("GET", f"/api/projects/{PID}/environments/production/variables", self._variables),
            ("GET", "/api/projects/[^/]+/environments/[^/]+/variables", self._no_environment),
            ("GET", "/api/external-services/[^/]+", self._unknown_service),
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for method, path, answer in self.routes:
            if request.method == method and re.fullmatch(path, request.url.path):
                return answer(request)
        return _error(404, "not_found", f"no route {request.method} {request.url.path}")

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    @staticmethod
    def _ok(body: Any, status: int = 200) -> httpx.Response:
        return httpx.Response(status, json=body)

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if not NAME.match(body["name"]):
            return _error(422, "invalid_input", "name: String should match pattern '^[a-z]…'")
        if body["name"] == self.service["name"]:
            return _error(409, "name_taken", f"name: a service named {body['name']!r} exists")
        return self._ok({**self.service, **body, "status": "provisioning"}, 202)

    def _op(self, request: httpx.Request) -> httpx.Response:
        self.service["generation"] += 1
        return self._ok(self.service, 202)

    def _delete(self, request: httpx.Request) -> httpx.Response:
        if self.linked:
            return _error(409, "linked", "the service is linked to projects; unlink them first")
        return self._ok({**self.service, "status": "deleting"}, 202)

    def _credentials(self, request: httpx.Request) -> httpx.Response:
        if not self.can_reveal:
            return _error(403, "forbidden", "this token lacks the 'secrets:read' permission")
        return self._ok({"username": "postgres", "password": "admin-pw", "ca_certificate": PEM})

    def _link(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return self._ok({**body, "status": "pending", "username": "shop_app"}, 202)

    def _unlink(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("environment") != "production":
            return _error(404, "not_linked", "the service is not linked to that environment")
        return self._ok({"status": "revoking"}, 202)

    def _variables(self, request: httpx.Request) -> httpx.Response:
        reveal = request.url.params.get("reveal") == "true"
        if reveal and not self.can_reveal:
            return _error(403, "forbidden", "revealing secrets needs the 'secrets:read' permission")
        url = PRIVATE_URL if reveal else PRIVATE_URL.replace(":pw@", ":********@")
        variables = {
            "DATABASE_URL": url,
            "POSTGRES_HOST": "temps-postgres-db1",
            "POSTGRES_PORT": "5432",
            "POSTGRES_PASSWORD": "pw" if reveal else "********",
            "TEMPS_CA_CERT": PEM,
        }
        links = [{"service_id": SID, "service_type": "postgres", "status": "active"}]
        return self._ok({"variables": variables, "links": links})

    def _no_environment(self, request: httpx.Request) -> httpx.Response:
        return _error(404, "not_found", "project 'shop' has no environment 'nope'")

    def _unknown_service(self, request: httpx.Request) -> httpx.Response:
        return _error(404, "not_found", f"no service with id {request.url.path.rsplit('/', 1)[1]}")


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi()


def temps(fake: FakeApi | httpx.MockTransport, *args: str, **env: str) -> Result:
    transport = fake if isinstance(fake, httpx.MockTransport) else httpx.MockTransport(fake)
    client = TempsClient(base_url="http://temps.test", token="t0ken", transport=transport)
    return CliRunner().invoke(app, list(args), obj=client, env=env or None)


def test_list_json_is_the_apis_answer(fake: FakeApi) -> None:
    result = temps(fake, "services", "list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["id"] == SID
    assert fake.requests[0].headers["Authorization"] == "Bearer t0ken"


def test_list_table_shows_the_loopback_address(fake: FakeApi) -> None:
    result = temps(fake, "services", "list")
    assert result.exit_code == 0
    assert "db1" in result.stdout
    assert "127.0.0.1:21001" in result.stdout


def test_create_sends_typed_parameters_and_resources(fake: FakeApi) -> None:
    result = temps(
        fake,
        "services", "create", "cache1", "--type", "redis", "--version", "7",
        "--param", "memory=256MB", "-p", "maxclients=100", "-p", 'eviction="noeviction"',
        "--memory-mb", "512", "--cpus", "0.5", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(fake.requests[0].content)
    assert body == {
        "name": "cache1",
        "service_type": "redis",
        "version": "7",
        "parameters": {"memory": "256MB", "maxclients": 100, "eviction": "noeviction"},
        "resources": {"memory_mb": 512, "cpus": 0.5},
    }


def test_create_bad_name_prints_the_apis_message_in_one_line(fake: FakeApi) -> None:
    result = temps(fake, "services", "create", "Bad_Name")
    assert result.exit_code == ExitCode.INPUT == 2
    assert result.stderr == "error: name: String should match pattern '^[a-z]…'\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["services", "create", "db1"], ExitCode.CONFLICT, "a service named 'db1' exists"),
        (["services", "show", "nope"], ExitCode.NOT_FOUND, "no service named 'nope'"),
        (["services", "show", "9" * 8 + "-9999-4999-8999-" + "9" * 12], ExitCode.NOT_FOUND,
         "no service with id"),
        (["services", "delete", "db1", "--yes"], ExitCode.CONFLICT, "unlink them first"),
        (["services", "credentials", "db1"], ExitCode.DENIED, "lacks the 'secrets:read'"),
        (["env", "shop", "nope"], ExitCode.NOT_FOUND, "has no environment 'nope'"),
        (["env", "nope", "production"], ExitCode.NOT_FOUND, "no project named 'nope'"),
        (["services", "create", "x1", "-p", "novalue"], ExitCode.INPUT, "expected key=value"),
        (["unlink", "db1", "-P", "shop", "-e", "staging"], ExitCode.NOT_FOUND, "not linked"),
    ],
)  # fmt: skip
def test_errors_map_to_exit_codes(
    fake: FakeApi, args: list[str], code: ExitCode, message: str
) -> None:
    fake.can_reveal = False
    result = temps(fake, *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1


def test_platform_failures_exit_1() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="upstream down")

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    failed = temps(httpx.MockTransport(broken), "services", "list")
    assert failed.exit_code == ExitCode.PLATFORM
    assert failed.stderr == "error: the Temps API failed (HTTP 503): upstream down\n"
    down = temps(httpx.MockTransport(unreachable), "services", "list")
    assert down.exit_code == ExitCode.PLATFORM
    assert "cannot reach the Temps API at http://temps.test" in down.stderr


def test_usage_errors_exit_2(fake: FakeApi) -> None:
    assert temps(fake, "services", "create").exit_code == 2
    assert temps(fake, "link", "db1").exit_code == 2  # --project is required
    assert fake.requests == []


def test_no_token_exits_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEMPS_TOKEN", raising=False)
    monkeypatch.setenv("TEMPS_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["services", "list"])
    assert result.exit_code == ExitCode.DENIED
    assert f"tried {tmp_path}/admin_token" in result.stderr


def test_names_resolve_to_ids(fake: FakeApi) -> None:
    result = temps(fake, "services", "stop", "db1", "--json")
    assert result.exit_code == 0, result.output
    assert fake.paths() == [
        "GET /api/external-services",
        f"POST /api/external-services/{SID}/stop",
    ]
    # an id is used as is, without listing
    fake.requests.clear()
    assert temps(fake, "services", "rotate", SID).exit_code == 0
    assert fake.paths() == [f"POST /api/external-services/{SID}/rotate-credentials"]


def test_wait_polls_until_the_generation_is_applied(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    polls = 0

    def converge(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        if polls == 3:
            fake.service["observed_generation"] = fake.service["generation"]
        return httpx.Response(200, json=fake.service)

    fake.routes.insert(0, ("GET", f"/api/external-services/{SID}", converge))
    result = temps(fake, "services", "start", SID, "--wait", "--json")
    assert result.exit_code == 0, result.output
    assert polls == 3
    assert json.loads(result.stdout)["observed_generation"] == 2


def test_wait_gives_up_with_exit_6(fake: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    result = temps(fake, "services", "stop", "db1", "--wait", "--timeout", "30")
    assert result.exit_code == ExitCode.TIMEOUT
    assert "gave up after 30s: service db1 is operational, not stopped" in result.stderr


def test_wait_reports_a_failed_service(fake: FakeApi) -> None:
    fake.service.update(status="failed", status_reason="image not found", observed_generation=2)
    result = temps(fake, "services", "retry", "db1", "--wait")
    assert result.exit_code == ExitCode.PLATFORM
    assert result.stderr == "error: service db1 failed: image not found\n"


def test_delete_off_a_terminal_needs_yes(fake: FakeApi) -> None:
    fake.linked = False
    refused = temps(fake, "services", "delete", "db1")
    assert refused.exit_code == ExitCode.INPUT
    assert "--yes" in refused.stderr
    assert temps(fake, "services", "delete", "db1", "--yes").exit_code == 0
    assert fake.paths()[-1] == f"DELETE /api/external-services/{SID}"


def test_link_and_unlink_by_names(fake: FakeApi) -> None:
    result = temps(fake, "link", "db1", "--project", "shop", "--env", "production", "--json")
    assert result.exit_code == 0, result.output
    link = next(r for r in fake.requests if r.method == "POST")
    assert json.loads(link.content) == {"project_id": PID, "environment": "production"}
    result = temps(fake, "unlink", "db1", "-P", "shop")
    assert result.exit_code == 0, result.output
    assert fake.requests[-1].url.params["environment"] == "production"


def test_link_wait_polls_until_active(fake: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    fake.links[0]["status"] = "pending"
    polls = 0

    def links(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        fake.links[0]["status"] = "active" if polls == 2 else "pending"
        return httpx.Response(200, json=fake.links)

    fake.routes.insert(0, ("GET", f"/api/external-services/{SID}/projects", links))
    result = temps(fake, "link", "db1", "-P", "shop", "--wait", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "active"
    assert polls == 2


def test_links_name_the_projects(fake: FakeApi) -> None:
    result = temps(fake, "links", "db1")
    assert result.exit_code == 0, result.output
    assert "shop" in result.stdout
    assert "shop_app" in result.stdout


def test_env_is_masked_unless_revealed(fake: FakeApi) -> None:
    masked = temps(fake, "env", "shop", "production")
    assert masked.exit_code == 0, masked.output
    assert "********" in masked.stdout
    assert ":pw@" not in masked.stdout
    assert "-----BEGIN CERTIFICATE----- … (" in masked.stdout  # the PEM abbreviated
    assert "reveal" not in str(fake.requests[-1].url)
    assert "--reveal shows them" in masked.stderr  # hints on stderr: stdout stays the answer
    revealed = temps(fake, "env", "shop", "production", "--reveal", "--format", "json")
    assert json.loads(revealed.stdout)["variables"]["DATABASE_URL"] == PRIVATE_URL
    assert fake.requests[-1].url.params["reveal"] == "true"


def test_env_dotenv_keeps_private_addresses(fake: FakeApi) -> None:
    result = temps(fake, "env", "shop", "production", "--reveal", "-f", "dotenv")
    assert result.exit_code == 0, result.output
    assert f"DATABASE_URL='{PRIVATE_URL}'\n" in result.stdout
    assert f"TEMPS_CA_CERT='{PEM}'\n" in result.stdout


def test_run_injects_rewritten_variables_and_a_private_ca(fake: FakeApi, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    script = (
        'env > "$OUT"; stat -c %a "$PGSSLROOTCERT" > "$OUT.mode"; '
        'cat "$PGSSLROOTCERT" > "$OUT.ca"; printf %s "$1" > "$OUT.arg"; exit 7'
    )
    result = temps(
        fake,
        "run", "--project", "shop", "--env", "production", "--",
        "sh", "-c", script, "sh", "$DATABASE_URL",
        OUT=str(out), CALLER="kept",
    )  # fmt: skip
    assert result.exit_code == 7, result.output  # the command's own exit code
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    local_url = "postgresql://shop_app:pw@127.0.0.1:21001/shop_production?sslmode=require"
    assert seen["DATABASE_URL"] == local_url
    assert (seen["POSTGRES_HOST"], seen["POSTGRES_PORT"]) == ("127.0.0.1", "21001")
    assert seen["CALLER"] == "kept"  # merged over the caller's environment
    assert Path(f"{out}.arg").read_text() == local_url  # `'$DATABASE_URL'` expanded by temps
    assert Path(f"{out}.mode").read_text().strip() == "600"
    assert Path(f"{out}.ca").read_text() == PEM
    ca_file = Path(seen["PGSSLROOTCERT"])
    assert {Path(seen[name]).parent for name in CA_ADDED} == {ca_file.parent}
    assert not ca_file.parent.exists()  # removed once the command ended
    assert not seen.get("SSL_CERT_FILE", "").startswith(str(ca_file.parent))  # not replaced


def test_run_a_missing_command_exits_127(fake: FakeApi) -> None:
    result = temps(fake, "run", "-P", "shop", "--", "no-such-command-xyz")
    assert result.exit_code == 127
    assert result.stderr == "error: command not found: no-such-command-xyz\n"


def test_run_options_after_the_command_belong_to_it(fake: FakeApi) -> None:
    result = temps(fake, "run", "-P", "shop", "sh", "-c", "exit 3")
    assert result.exit_code == 3, result.output


def test_run_a_child_killed_by_a_signal_exits_128_plus_n(fake: FakeApi) -> None:
    result = temps(fake, "run", "-P", "shop", "--", "sh", "-c", "kill -TERM $$")
    assert result.exit_code == 128 + 15


def test_run_needs_secrets_read(fake: FakeApi) -> None:
    fake.can_reveal = False
    result = temps(fake, "run", "-P", "shop", "--", "true")
    assert result.exit_code == ExitCode.DENIED
    assert "secrets:read" in result.stderr


def test_expand_arguments_only_whole_references() -> None:
    variables = {"DATABASE_URL": "postgresql://x", "A": "1"}
    assert expand_arguments(
        ["psql", "$DATABASE_URL", "${A}", "x$A", "$HOME", "$A$A", "sh -c 'echo $A'"], variables
    ) == ["psql", "postgresql://x", "1", "x$A", "$HOME", "$A$A", "sh -c 'echo $A'"]


def test_ca_files_are_private_and_keep_the_callers_roots(tmp_path: Path) -> None:
    corporate = tmp_path / "corporate.pem"
    corporate.write_text("-----BEGIN CERTIFICATE-----\ncorp\n-----END CERTIFICATE-----")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    caller = {"REQUESTS_CA_BUNDLE": str(corporate), "NODE_EXTRA_CA_CERTS": "/nonexistent"}
    variables = with_ca_files({"TEMPS_CA_CERT": PEM.rstrip()}, run_dir, caller)
    files = {name: Path(variables[name]) for name in ("PGSSLROOTCERT", *CA_ADDED)}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.parent == run_dir
    assert files["PGSSLROOTCERT"].read_text() == PEM  # libpq: the installation CA alone
    assert files["NODE_EXTRA_CA_CERTS"] == files["PGSSLROOTCERT"]  # additive, nothing to keep
    assert files["REQUESTS_CA_BUNDLE"].read_text() == PEM + corporate.read_text() + "\n"
    aws = files["AWS_CA_BUNDLE"].read_text()  # replaces the roots: certifi's added
    assert aws.startswith(PEM)
    assert aws.count("BEGIN CERTIFICATE") > 10
    assert with_ca_files({"A": "1"}, run_dir, caller) == {"A": "1"}  # nothing linked: no CA


# --- day 2: update, resize, scale, resources, health, stats, runtime, logs -f, tokens, audit ---

TOKEN_ID = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
MEMBERS = [
    {"role": "primary", "container_name": "temps-postgres-db1", "outcome": "applied"},
    {"role": "replica-1", "container_name": "temps-postgres-db1-r1", "outcome": "stopped"},
]


class Day2Api(FakeApi):
    """FakeApi plus the day-2 routes: parameters, caps, health, samples, logs, tokens, audit."""

    def __init__(self) -> None:
        super().__init__()
        self.service["resources"] = {"memory_mb": 256, "swap_mb": None, "cpus": 0.5}
        self.log: list[str] = [f"line {i}" for i in range(5)]
        self.wal_snapshot = True
        self.tokens = [{"id": TOKEN_ID, "name": "ci", "permissions": ["admin"]}]
        base = f"/api/external-services/{SID}"
        self.routes[:0] = [
            ("PATCH", base, self._patch),
            ("PATCH", f"{base}/resources", self._resources),
            ("GET", f"{base}/health", lambda r: self._ok({"status": "operational",
                                                          "metrics": {}, "history": []})),
            ("GET", f"{base}/wal-health", self._wal),
            ("GET", f"{base}/stats", lambda r: self._ok({"service_id": SID, "members": [
                {"role": "primary", "status": "running", "cpu_percent": 1.5, "online_cpus": 2,
                 "memory_usage_bytes": 3 << 20, "memory_limit_bytes": 64 << 20,
                 "memory_percent": 4.7}]})),
            ("GET", f"{base}/logs", self._logs),
            ("POST", "/api/tokens", lambda r: self._ok(
                {**json.loads(r.content), "id": TOKEN_ID, "token": "temps_secret"}, 201)),
            ("GET", "/api/tokens", lambda r: self._ok(self.tokens)),
            ("DELETE", f"/api/tokens/{TOKEN_ID}", lambda r: httpx.Response(204)),
            ("GET", "/api/audit-log", lambda r: self._ok([
                {"at": "2025-01-01T00:00:00+00:00", "actor": "admin", "action": "service.update",
                 "target": SID, "ip": "127.0.0.1", "details": None}])),
        ]  # fmt: skip

    def bodies(self, method: str, path_end: str) -> list[Any]:
        return [
            json.loads(r.content)
            for r in self.requests
            if r.method == method and r.url.path.endswith(path_end)
        ]

    def _patch(self, request: httpx.Request) -> httpx.Response:
        self.service["generation"] += 1
        return self._ok(self.service, 202)

    def _resources(self, request: httpx.Request) -> httpx.Response:
        return self._ok({"limits": json.loads(request.content), "applied": MEMBERS})

    def _wal(self, request: httpx.Request) -> httpx.Response:
        if not self.wal_snapshot:
            return _error(404, "not_found", "no WAL health yet")
        return self._ok({"pg_wal_bytes": 48 << 20, "archive_mode": "on", "warnings": []})

    def _logs(self, request: httpx.Request) -> httpx.Response:
        tail = int(request.url.params["tail"])
        return self._ok({"member": "primary", "lines": self.log[-tail:]})


@pytest.fixture
def day2() -> Day2Api:
    return Day2Api()


def test_update_patches_typed_parameters(day2: Day2Api) -> None:
    result = temps(day2, "services", "update", "db1", "-p", "memory_mb=2048", "-p", "backups=false")
    assert result.exit_code == 0, result.output
    assert day2.bodies("PATCH", SID) == [{"parameters": {"memory_mb": 2048, "backups": False}}]
    assert temps(day2, "services", "update", "db1").exit_code == ExitCode.INPUT  # no --param


def test_resize_speaks_each_engines_size_names(day2: Day2Api) -> None:
    result = temps(day2, "services", "resize", "db1", "--memory", "2GB", "--storage", "20")
    assert result.exit_code == 0, result.output
    day2.service["service_type"] = "s3"
    assert temps(day2, "services", "resize", "db1", "--storage", "100GB").exit_code == 0
    assert day2.bodies("PATCH", SID) == [
        {"parameters": {"memory_mb": 2048, "storage_gb": 20}},
        {"parameters": {"size_gb": 100}},
    ]
    odd = temps(day2, "services", "resize", "db1", "--storage", "1500MB")
    assert odd.exit_code == ExitCode.INPUT
    assert "--storage '1500MB' is not a whole number of GB" in odd.stderr
    day2.service["service_type"] = "redis"
    refused = temps(day2, "services", "resize", "db1", "--storage", "1GB")
    assert refused.exit_code == ExitCode.INPUT
    assert "a redis service has no storage to resize" in refused.stderr
    assert len(day2.bodies("PATCH", SID)) == 2


def test_scale_sets_replicas_on_postgres_only(day2: Day2Api) -> None:
    assert temps(day2, "services", "scale", "db1", "--replicas", "2").exit_code == 0
    assert day2.bodies("PATCH", SID) == [{"parameters": {"replicas": 2}}]
    day2.service["service_type"] = "redis"
    refused = temps(day2, "services", "scale", "db1", "--replicas", "1")
    assert refused.exit_code == ExitCode.INPUT
    assert "only PostgreSQL has read replicas" in refused.stderr


def test_resources_keep_caps_not_named_and_clear_lifts_all(day2: Day2Api) -> None:
    shown = temps(day2, "services", "resources", "db1", "--json")
    assert json.loads(shown.stdout) == day2.service["resources"]
    changed = temps(day2, "services", "resources", "db1", "--cpus", "1")
    assert changed.exit_code == 0, changed.output
    assert "replica-1" in changed.stdout
    assert "stopped" in changed.stdout
    assert temps(day2, "services", "resources", "db1", "--clear").exit_code == 0
    assert temps(day2, "services", "resources", "db1", "--clear", "--cpus", "1").exit_code == 2
    assert day2.bodies("PATCH", "/resources") == [{"memory_mb": 256, "cpus": 1.0}, {}]


def test_health_adds_wal_health_for_postgres_once_probed(day2: Day2Api) -> None:
    result = temps(day2, "services", "health", "db1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["wal_health"]["archive_mode"] == "on"
    day2.wal_snapshot = False
    early = temps(day2, "services", "health", "db1")
    assert early.exit_code == 0, early.output
    assert "operational" in early.stdout
    assert "no WAL health yet" in early.stderr


def test_stats_watch_stops_after_count_samples(
    day2: Day2Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    result = temps(day2, "services", "stats", "db1", "--watch", "--count", "3", "--json")
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["members"][0]["cpu_percent"] for s in samples] == [1.5, 1.5, 1.5]
    table = temps(day2, "services", "stats", "db1", "--watch", "--count", "2")
    assert table.exit_code == 0, table.output
    assert "3.0 / 64 MiB" in table.stdout
    assert day2.paths().count(f"GET /api/external-services/{SID}/stats") == 5


def test_new_lines_are_those_after_the_overlap() -> None:
    from temps_cli.observe import new_lines

    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["a", "b"], ["x"]) == ["x"]  # a recreated container starts afresh
    assert new_lines([], ["a"]) == ["a"]


def test_logs_follow_prints_each_line_once_until_ctrl_c(
    day2: Day2Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls = iter([["line 5"], [], ["line 6", "line 7"]])

    def sleep(_: float) -> None:
        more = next(polls, None)
        if more is None:
            raise KeyboardInterrupt
        day2.log.extend(more)

    monkeypatch.setattr("time.sleep", sleep)
    result = temps(day2, "services", "logs", "db1", "-f", "--tail", "2")
    assert result.exit_code == 130, result.output
    assert result.stdout.splitlines() == ["line 3", "line 4", "line 5", "line 6", "line 7"]


def test_tokens_create_with_expiry_and_revoke_by_name(day2: Day2Api) -> None:
    created = temps(day2, "tokens", "create", "ci", "-p", "external_services:read",
                    "--expires-in", "12h")  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "temps_secret" in created.stdout
    assert "shown this once" in created.stderr
    assert day2.bodies("POST", "/api/tokens") == [
        {"name": "ci", "permissions": ["external_services:read"], "expires_in_s": 43200}
    ]
    assert (
        temps(day2, "tokens", "create", "x", "-p", "admin", "--expires-in", "soon").exit_code == 2
    )
    assert temps(day2, "tokens", "revoke", "ci").exit_code == 0
    assert f"DELETE /api/tokens/{TOKEN_ID}" in day2.paths()
    assert temps(day2, "tokens", "revoke", "nope").exit_code == ExitCode.NOT_FOUND


def test_audit_filters_by_service_name(day2: Day2Api) -> None:
    result = temps(day2, "audit", "--service", "db1", "--limit", "5")
    assert result.exit_code == 0, result.output
    params = day2.requests[-1].url.params
    assert (params["service_id"], params["limit"]) == (SID, "5")
    assert "service.update" in result.stdout
    assert "db1" in result.stdout


def _complete(transport: httpx.MockTransport, words: str) -> Result:
    """What bash completion asks `temps` for, as a shell's Tab does."""
    client = TempsClient(base_url="http://temps.test", token="t0ken", transport=transport)
    env = {"_TEMPS_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}  # fmt: skip
    return CliRunner().invoke(app, [], obj=client, env=env, prog_name="temps")


def test_completion_offers_service_and_project_names(day2: Day2Api) -> None:
    services = _complete(httpx.MockTransport(day2), "temps services logs d")
    assert services.stdout.split() == ["db1"]
    assert _complete(httpx.MockTransport(day2), "temps services logs x").stdout.split() == []
    projects = _complete(httpx.MockTransport(day2), "temps env s")
    assert projects.stdout.split() == ["shop"]


def test_completion_is_silent_without_an_api() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    result = _complete(httpx.MockTransport(unreachable), "temps services show d")
    assert (result.exit_code, result.stdout.strip(), result.stderr) == (0, "", "")
