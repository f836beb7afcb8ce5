from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from pydantic import ValidationError
from temps_shared.engines.postgres import PostgresEngine, PostgresParameters, memory_settings
from temps_shared.engines.scram import password_clause, scram_sha256_verifier
from temps_shared.engines.sizes import parse_size_gb, parse_size_mb
from temps_shared.runtime import ContainerState
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import create_ca, issue_server_certificate


def test_defaults_follow_the_spec() -> None:
    assert PostgresParameters().model_dump() == {
        "storage_gb": 10,
        "memory_mb": 1024,
        "replicas": 1,
        "backups": True,
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"storage": "20GB"}, {"storage_gb": 20}),
        ({"memory": "2GB"}, {"memory_mb": 2048}),
        ({"memory": "512MB"}, {"memory_mb": 512}),
        ({"memory": "1GiB"}, {"memory_mb": 1024}),
    ],
)
def test_spec_aliases_with_units(given: dict[str, str], expected: dict[str, int]) -> None:
    dumped = PostgresParameters.model_validate(given).model_dump()
    assert {k: dumped[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"memory_mb": 127}, "memory_mb"),
        ({"storage_gb": 0}, "storage_gb"),
        ({"replicas": 6}, "replicas"),
        ({"replicas": -1}, "replicas"),
        ({"colour": "blue"}, "colour"),
        ({"storage": "x"}, ""),
    ],
)
def test_bad_parameters_are_refused(given: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PostgresParameters.model_validate(given)
    assert field in str(caught.value)


def test_sizes() -> None:
    assert parse_size_mb(256) == 256
    assert parse_size_mb("1.5GB") == 1536
    assert parse_size_gb("10GB") == 10
    assert parse_size_gb(5) == 5
    for bad in ("ten", "", True, None):
        with pytest.raises(ValueError, match="size"):
            parse_size_mb(bad)


def test_memory_settings_scale_with_the_allocation() -> None:
    assert memory_settings(1024) == {
        "shared_buffers": "256MB",
        "effective_cache_size": "768MB",
        "maintenance_work_mem": "64MB",
        "work_mem": "2MB",
    }
    assert memory_settings(128)["shared_buffers"] == "32MB"


def _service(name: str = "db1") -> ServiceRecord:
    now = datetime.now(UTC)
    return ServiceRecord(
        id=uuid4(),
        name=name,
        service_type="postgres",
        version="15",
        parameters=PostgresParameters().model_dump(),
        resources={},
        secrets_ciphertext="",
        desired_state="running",
        generation=1,
        purged=False,
        created_at=now,
        updated_at=now,
    )


def test_container_spec_is_hardened_labelled_and_loopback_only() -> None:
    engine = PostgresEngine()
    service = _service()
    creds = engine.generate_credentials(service.name)
    ca = create_ca()
    cert = issue_server_certificate(ca, ["temps-postgres-db1", "localhost"], ["127.0.0.1"])
    spec = engine.container_spec(service, creds, {"postgres": 21000}, cert, "temps/postgres:15")
    assert spec.name == "temps-postgres-db1"
    assert spec.volume == "temps-postgres-db1-data"
    assert spec.ports == {5432: 21000}
    assert spec.labels["io.temps.service-id"] == str(service.id)
    assert "shared_preload_libraries=pg_stat_statements" in spec.command
    assert "archive_mode=off" in spec.command
    assert set(spec.files) == {
        "/etc/temps/tls/server.crt",
        "/etc/temps/tls/server.key",
        "/etc/temps/tls/ca.crt",
        "/etc/temps/secrets/postgres-password",
    }
    # The initial password travels as a file, never in env (`docker inspect` shows env).
    assert spec.files["/etc/temps/secrets/postgres-password"] == creds["password"].encode()
    assert spec.env["POSTGRES_PASSWORD_FILE"] == "/etc/temps/secrets/postgres-password"
    assert "POSTGRES_PASSWORD" not in spec.env
    assert not any(
        secret in value
        for value in spec.env.values()
        for secret in creds.values()
        if secret not in (creds["username"], creds["database"])
    )
    # Drift is judged on what the container runs; secrets (env) do not count.
    running = ContainerState(
        id="x",
        name=spec.name,
        status="running",
        labels=spec.labels,
        exit_code=0,
        host_ports=dict(spec.ports),
        image=spec.image,
        command=list(spec.command),
        mounts={spec.mount_path: spec.volume},
    )
    other = engine.container_spec(
        service, {**creds, "password": "x"}, {"postgres": 21000}, cert, spec.image
    )
    assert other.drift(running) == []
    moved = engine.container_spec(service, creds, {"postgres": 21001}, cert, spec.image)
    assert moved.drift(running) == ["ports {5432: 21000} → {5432: 21001}"]
    archiving = engine.container_spec(
        service, creds, {"postgres": 21000}, cert, spec.image, archiving=True
    )
    assert archiving.drift(running) == ["command"]
    assert "archive_mode=on" in archiving.command
    # Each push bounded (a hung store would hide the failure), a switch at least every minute.
    assert any(a.startswith("archive_command=timeout 60 pgbackrest") for a in archiving.command)
    assert "archive_timeout=60" in archiving.command
    # A container an earlier release made with the password in env is recreated without it.
    old = replace(running, env_names=frozenset({"PGDATA", "POSTGRES_PASSWORD", "PATH"}))
    assert spec.drift(old) == ["env POSTGRES_PASSWORD"]
    assert spec.drift(replace(running, env_names=frozenset(spec.env) | {"PATH"})) == []


def test_replica_spec_clones_the_primary_over_verified_tls() -> None:
    engine = PostgresEngine()
    service = _service()
    creds = engine.generate_credentials(service.name)
    cert = issue_server_certificate(create_ca(), ["temps-postgres-db1-replica-2"], ["127.0.0.1"])
    spec = engine.replica_spec(
        service, 2, creds, {"postgres": 21000, "replica-2": 21002}, cert, "temps/postgres:15"
    )
    assert spec.name == "temps-postgres-db1-replica-2"
    assert spec.volume == "temps-postgres-db1-replica-2-data"
    assert spec.labels["io.temps.role"] == "replica-2"
    assert spec.ports == {5432: 21002}
    assert "POSTGRES_PASSWORD" not in spec.env
    assert not any(creds["replication_password"] in v for v in spec.env.values())
    assert spec.retired_env == {"POSTGRES_PASSWORD"}
    conninfo = spec.files["/etc/temps/replication/primary.conninfo"].decode()
    assert "host=temps-postgres-db1 " in conninfo
    assert "user=temps_replicator" in conninfo
    assert "sslmode=verify-full" in conninfo
    assert spec.files["/etc/temps/replication/slot"] == b"temps_replica_2"
    info = engine.connection_info(
        service,
        creds,
        {"postgres": 21000, "replica-1": 21001},
    )
    assert info["replicas"] == [
        {
            "member": "replica-1",
            "host": "temps-postgres-db1-replica-1",
            "port": 5432,
            "local_host": "127.0.0.1",
            "local_port": 21001,
        }
    ]


def test_connection_urls_require_tls() -> None:
    engine = PostgresEngine()
    creds = {"username": "u", "password": "p", "database": "d"}
    info = engine.connection_info(_service("app-db"), creds, {"postgres": 21005})
    view = engine.credentials_view(creds, info, "CA")
    assert view["connection_url"] == "postgresql://u:p@temps-postgres-app-db:5432/d?sslmode=require"
    assert view["local_connection_url"] == "postgresql://u:p@127.0.0.1:21005/d?sslmode=require"
    assert view["ca_certificate"] == "CA"


# RFC 7677 §3: user "user", password "pencil", and the exchange a server holding its verifier
# must accept (client proof) and answer (server signature).
_RFC7677_SALT = "W22ZaJ0SNY7soEsUEjb6gQ=="
_RFC7677_AUTH_MESSAGE = (
    "n=user,r=rOprNGfwEbeRWgbNEkqO,"
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
)
_RFC7677_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
_RFC7677_SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_verifier_matches_the_rfc7677_exchange() -> None:
    verifier = scram_sha256_verifier("pencil", salt=base64.b64decode(_RFC7677_SALT))
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    assert method == "SCRAM-SHA-256"
    assert params == f"4096:{_RFC7677_SALT}"
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    message = _RFC7677_AUTH_MESSAGE.encode()
    # The server's check of the client's proof: ClientKey = proof XOR HMAC(StoredKey, msg).
    signature = hmac.new(stored_key, message, hashlib.sha256).digest()
    client_key = bytes(
        a ^ b for a, b in zip(base64.b64decode(_RFC7677_PROOF), signature, strict=True)
    )
    assert hashlib.sha256(client_key).digest() == stored_key
    assert hmac.new(server_key, message, hashlib.sha256).digest() == base64.b64decode(
        _RFC7677_SERVER_SIGNATURE
    )


def test_scram_verifiers_are_salted_and_never_hold_the_password() -> None:
    one, two = scram_sha256_verifier("S3cretPassw0rd"), scram_sha256_verifier("S3cretPassw0rd")
    assert one != two  # a fresh 16-byte salt each time
    assert len(base64.b64decode(one.split("$")[1].split(":")[1])) == 16
    clause = password_clause("S3cretPassw0rd")
    assert clause.startswith("PASSWORD 'SCRAM-SHA-256$4096:")
    assert "S3cretPassw0rd" not in clause
    for bad in ("", "with space", "tab\there", "é"):
        with pytest.raises(ValueError, match="printable ASCII"):
            scram_sha256_verifier(bad)
