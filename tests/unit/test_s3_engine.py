from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from pydantic import ValidationError
from temps_shared.engines import ENGINES
from temps_shared.engines.s3 import (
    S3_PORT,
    LifecycleRule,
    S3Engine,
    S3Parameters,
    admin_config_path,
    admin_identity,
    default_bucket,
    identities_document,
    lifecycle_rules,
    scoped_actions,
    server_command,
)
from temps_shared.engines.s3_buckets import public_read_policy
from temps_shared.engines.s3_jobs import (
    QUOTA_REASON,
    QuotaState,
    buckets_read_only,
    is_expired,
    parse_bucket_usage,
    quota_limit_bytes,
)
from temps_shared.settings import TempsSettings
from temps_shared.store.services import ServiceRecord
from temps_shared.tls import create_ca, issue_server_certificate


def _service(name: str = "files", **parameters: object) -> ServiceRecord:
    now = datetime.now(UTC)
    return ServiceRecord(
        id=uuid4(),
        name=name,
        service_type="s3",
        version="4",
        parameters=S3Parameters.model_validate(parameters).model_dump(),
        resources={},
        secrets_ciphertext="",
        desired_state="running",
        generation=1,
        purged=False,
        created_at=now,
        updated_at=now,
    )


def test_defaults_follow_the_spec() -> None:
    assert S3Parameters().model_dump() == {
        "size_gb": 50,
        "public_read": False,
        "versioning": False,
        "lifecycle": [],
    }


def test_registered_with_an_image() -> None:
    assert isinstance(ENGINES["s3"], S3Engine)
    assert TempsSettings().images["s3"] == {"4": "temps/seaweedfs:4"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"size": "10GB"}, {"size_gb": 10}),
        ({"size": 7}, {"size_gb": 7}),
        ({"public-read": True}, {"public_read": True}),
        # PATCH merges stored canonical names with the request: the alias is the newer value.
        ({"public_read": False, "public-read": True}, {"public_read": True}),
        ({"size_gb": 50, "size": "2GB"}, {"size_gb": 2}),
        (
            {"lifecycle": [{"prefix": "tmp/", "expire_days": 1}]},
            {"lifecycle": [{"prefix": "tmp/", "expire_days": 1}]},
        ),
    ],
)
def test_spec_aliases(given: dict[str, object], expected: dict[str, object]) -> None:
    dumped = S3Parameters.model_validate(given).model_dump()
    assert {k: dumped[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"size_gb": 0}, "size_gb"),
        ({"size": "512MB"}, "size_gb"),
        ({"size": "lots"}, "size"),
        ({"lifecycle": [{"prefix": "tmp/", "expire_days": 0}]}, "expire_days"),
        ({"lifecycle": [{"expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "", "expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "/tmp", "expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "a//b", "expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "a/../b", "expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "a\nb", "expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "x" * 1025, "expire_days": 3}]}, "prefix"),
        ({"lifecycle": [{"prefix": "tmp/", "expire_days": 1, "extra": 1}]}, "extra"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_parameters_are_refused(given: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        S3Parameters.model_validate(given)
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("name", "bucket"),
    [("files", "files"), ("my-app-assets", "my-app-assets"), ("ab", "ab-data"), ("x-", "x-data")],
)
def test_default_bucket_is_a_valid_bucket_name(name: str, bucket: str) -> None:
    assert default_bucket(name) == bucket


def test_command_keeps_everything_on_loopback_and_telemetry_off() -> None:
    credentials = S3Engine().generate_credentials("files")
    command = server_command(credentials)
    assert command[:4] == ["--forward", f"{S3_PORT}:8444", "--", "weed"]
    for flag in ("-master.telemetry=false", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"):
        assert flag in command
    joined = " ".join(command)
    assert credentials["secret_key"] not in joined
    assert credentials["access_key"] not in joined
    # A rotated admin key changes the command (the static identities file is read at start).
    other = S3Engine().generate_credentials("files")
    assert admin_config_path(other) != admin_config_path(credentials)


def test_container_spec_carries_tls_and_the_admin_identity_as_files() -> None:
    engine = S3Engine()
    credentials = engine.generate_credentials("files")
    ca = create_ca()
    certificate = issue_server_certificate(ca, ["temps-s3-files", "localhost"], ["127.0.0.1"])
    spec = engine.container_spec(
        _service(), credentials, {"s3": 21005}, certificate, "temps/seaweedfs:4"
    )
    assert spec.name == "temps-s3-files"
    assert spec.ports == {S3_PORT: 21005}
    assert spec.env == {}
    assert spec.mount_path == "/data"
    identities = json.loads(spec.files[admin_config_path(credentials)])["identities"]
    assert identities[0]["credentials"] == [
        {"accessKey": credentials["access_key"], "secretKey": credentials["secret_key"]}
    ]
    assert "Admin" in identities[0]["actions"]
    assert set(spec.files) >= {"/etc/temps/tls/server.crt", "/etc/temps/tls/server.key"}
    # Live settings stay out of the command: changing them must not recreate the container.
    changed = _service(public_read=True, versioning=True, size_gb=3)
    assert engine.container_spec(changed, credentials, {"s3": 21005}, certificate, "i").command == (
        spec.command
    )


def test_connection_info_and_credentials_view() -> None:
    engine = S3Engine()
    credentials = engine.generate_credentials("files")
    info = engine.connection_info(_service(), credentials, {"s3": 21005})
    assert info == {
        "host": "temps-s3-files",
        "port": S3_PORT,
        "local_host": "127.0.0.1",
        "local_port": 21005,
        "bucket": "files",
        "scheme": "https",
    }
    view = engine.credentials_view(credentials, info, "CA")
    assert view == {
        "access_key": credentials["access_key"],
        "secret_key": credentials["secret_key"],
        "endpoint": f"https://temps-s3-files:{S3_PORT}",
        "local_endpoint": "https://127.0.0.1:21005",
        "bucket": "files",
        "region": "us-east-1",
        "ca_certificate": "CA",
    }


def test_identities_are_scoped_to_a_bucket() -> None:
    assert scoped_actions("files") == ("Read:files", "Write:files", "List:files", "Tagging:files")
    credentials = {"access_key": "AK", "secret_key": "SK"}
    document = json.loads(identities_document([admin_identity(credentials)]))
    assert document["identities"][0]["name"] == "temps-admin"


def test_bucket_documents() -> None:
    policy = public_read_policy("files")
    assert policy["Statement"][0]["Principal"] == "*"
    assert policy["Statement"][0]["Resource"] == ["arn:aws:s3:::files", "arn:aws:s3:::files/*"]
    rules = lifecycle_rules([LifecycleRule(prefix="tmp/", expire_days=1)])
    assert rules == [
        {
            "ID": "temps-0",
            "Status": "Enabled",
            "Filter": {"Prefix": "tmp/"},
            "Expiration": {"Days": 1},
        }
    ]


def test_bucket_usage_and_read_only_flag_are_parsed() -> None:
    output = (
        '  files\tsize:3145816\tlogical:76\tchunk:0\towner:"temps-admin"\n'
        "  other\tsize:1048632\tchunk:1\n"
        '{\n  "version":  1,\n  "locations":  [\n    {"locationPrefix": "/buckets/",'
        ' "readOnly": true}\n  ]\n}\n'
    )
    assert parse_bucket_usage(output) == {"files": 76, "other": 1048632}
    assert buckets_read_only(output)
    assert not buckets_read_only('{"version": 1, "locations": []}')
    assert not buckets_read_only("")


def test_quota_state() -> None:
    limit = quota_limit_bytes(2, unit_mb=1)
    assert limit == 2 * 1048576
    assert quota_limit_bytes(50) == 50 * 1024**3
    over = QuotaState(limit + 1, limit, {"files": limit + 1}, read_only=True, changed=True)
    assert over.over
    assert over.reason.startswith(QUOTA_REASON)
    assert "size_gb" in over.reason
    assert not QuotaState(limit, limit, {}, read_only=False, changed=False).over


def test_expiry_is_judged_as_of_a_reference_time() -> None:
    rule = LifecycleRule(prefix="tmp/", expire_days=1)
    written = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert not is_expired(written, rule, written + timedelta(hours=23))
    assert is_expired(written, rule, written + timedelta(days=1))
    assert is_expired(written, rule, written + timedelta(days=2))
