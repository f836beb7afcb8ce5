"""pgBackRest recipe without a container: the config per pgBackRest version, the destinations it
refuses, the target format, the reading of `info --output=json` (samples captured from the real
2.33 on :13 and 2.55.1 on :17 with a posix repository), and the choice of a backup set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from temps_shared.backups import pgbackrest as pb

SERVICE_ID = UUID("8a0e6c3e-2b44-4b7e-9d55-0f3f1c2d9e10")
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

# `pgbackrest info --output=json` of 2.33 (no `lsn`, no `error`): a full and an incr.
INFO_233 = (
    '[{"archive":[{"database":{"id":1,"repo-key":1},"id":"13-1","max":"000000010000000000000004",'
    '"min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000002",'
    '"stop":"000000010000000000000002"},"backrest":{"format":5,"version":"2.33"},"database":{"id":1,'
    '"repo-key":1},"info":{"delta":24424723,"repository":{"delta":2989852,"size":2989852},'
    '"size":24424723},"label":"20261203-202745F","prior":null,"reference":null,"timestamp":'
    '{"start":1796329665,"stop":1796329668},"type":"full"},{"archive":{"start":'
    '"000000010000000000000004","stop":"000000010000000000000004"},"backrest":{"format":5,'
    '"version":"2.33"},"database":{"id":1,"repo-key":1},"info":{"delta":2203913,"repository":'
    '{"delta":231181,"size":2990347},"size":24432915},"label":"20261203-202745F_20261203-202749I",'
    '"prior":"20261203-202745F","reference":["20261203-202745F"],"timestamp":{"start":1796329669,'
    '"stop":1796329670},"type":"incr"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":'
    '7715177154472472591,"version":"13"}],"name":"demo","repo":[{"cipher":"none","key":1,"status":'
    '{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]'
)
# The same of 2.55.1 (with `lsn` and `error`).
INFO_255 = (
    '[{"archive":[{"database":{"id":1,"repo-key":1},"id":"17-1","max":"000000010000000000000004",'
    '"min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000002",'
    '"stop":"000000010000000000000002"},"backrest":{"format":5,"version":"2.55.1"},"database":'
    '{"id":1,"repo-key":1},"error":false,"info":{"delta":23422031,"repository":{"delta":3014291,'
    '"size":3014291},"size":23422031},"label":"20261203-202753F","lsn":{"start":"0/2000028",'
    '"stop":"0/2000120"},"prior":null,"reference":null,"timestamp":{"start":1796329673,"stop":'
    '1796329677},"type":"full"},{"archive":{"start":"000000010000000000000004","stop":'
    '"000000010000000000000004"},"backrest":{"format":5,"version":"2.55.1"},"database":{"id":1,'
    '"repo-key":1},"error":false,"info":{"delta":1474817,"repository":{"delta":167543,"size":'
    '3014850},"size":23430222},"label":"20261203-202753F_20261203-202757I","lsn":{"start":'
    '"0/4000028","stop":"0/4000120"},"prior":"20261203-202753F","reference":["20261203-202753F"],'
    '"timestamp":{"start":1796329677,"stop":1796329679},"type":"incr"}],"cipher":"none","db":[{"id":'
    '1,"repo-key":1,"system-id":7715177192450109457,"version":"17"}],"name":"demo","repo":[{"cipher":'
    '"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":'
    '{"held":false}},"message":"ok"}}]'
)
# Before stanza-create (the same on both versions).
INFO_MISSING = (
    '[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"demo","repo":[{"cipher":"none",'
    '"key":1,"status":{"code":1,"message":"missing stanza path"}}],"status":{"code":1,"lock":'
    '{"backup":{"held":false}},"message":"missing stanza path"}}]'
)


def _repo(ca_pem: str | None = CA, endpoint: str = "https://backup-store:8333") -> pb.Repository:
    return pb.repository(
        endpoint,
        "temps-backups",
        "us-east-1",
        "AK1",
        "s3cr3t/+=",
        ca_pem,
        SERVICE_ID,
        retention_days=9,
    )


def _options(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.parametrize(("major", "bundle"), [(13, False), (15, True), (17, True)])
def test_config_per_version(major: int, bundle: bool) -> None:
    text = pb.config(_repo(), "orders", major, "temps_admin")
    options = _options(text)
    assert ("repo1-bundle" in options) is bundle
    assert options["repo1-s3-key-secret"] == "s3cr3t/+="
    assert options["repo1-s3-endpoint"] == "backup-store"
    assert options["repo1-storage-port"] == "8333"
    assert options["repo1-path"] == f"/pgbackrest/{SERVICE_ID}"
    assert options["repo1-storage-ca-file"] == "/var/lib/postgresql/data/temps/s3-ca.pem"
    assert options["repo1-retention-full"] == "9"
    assert options["repo1-s3-uri-style"] == "path"
    assert options["compress-type"] == "zst"
    assert options["log-level-console"] == "warn"
    assert text.startswith("[global]\n")
    assert "\n[orders]\npg1-path=/var/lib/postgresql/data/pgdata\n" in text


def test_config_has_the_ca_line_only_with_a_ca() -> None:
    assert "repo1-storage-ca-file" not in pb.config(_repo(ca_pem=None), "orders", 15, "temps_admin")


def test_secret_stays_out_of_repr() -> None:
    assert "s3cr3t" not in repr(_repo())
    assert "BEGIN CERTIFICATE" not in repr(_repo())


def test_config_refuses_a_stanza_that_is_not_plain() -> None:
    with pytest.raises(ValueError, match="stanza"):
        pb.config(_repo(), "a]\nrepo1-path=/x", 15, "temps_admin")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://backup-store:8333",
        "https://172.21.0.2:8333",
        "https://[fd00::2]:8333",
        "https://[::1]",
        "https://",
        "backup-store:8333",
        "https://backup-store:99999",
        "https://user:pw@backup-store",
        "https://backup-store/prefix",
        "https://bad_host",
    ],
)
def test_repository_refuses_what_pgbackrest_cannot_use(endpoint: str) -> None:
    with pytest.raises(pb.RepositoryError):
        _repo(endpoint=endpoint)


def test_repository_refuses_a_multiline_secret() -> None:
    with pytest.raises(pb.RepositoryError):
        pb.repository("https://s3.example.com", "b", "r", "ak", "x\nrepo1-path=/", None, SERVICE_ID)


@pytest.mark.parametrize(
    ("endpoint", "host", "port"),
    [
        ("https://backup-store:8333", "backup-store", 8333),
        ("https://S3.Example.com/", "s3.example.com", 443),
        ("https://minio.internal.lan", "minio.internal.lan", 443),
    ],
)
def test_repository_accepts_dns_names(endpoint: str, host: str, port: int) -> None:
    repo = _repo(endpoint=endpoint)
    assert (repo.host, repo.port) == (host, port)
    assert repo.path == pb.repo_path(SERVICE_ID) == f"/pgbackrest/{SERVICE_ID}"
    assert repo.retention_days == 9


def test_supports_bundle() -> None:
    assert [pb.supports_bundle(m) for m in (13, 15, 17)] == [False, True, True]


def test_archive_command_and_command() -> None:
    assert pb.archive_command("orders") == (
        "timeout 60 pgbackrest --config=/var/lib/postgresql/data/temps/pgbackrest.conf "
        "--stanza=orders archive-push %p"
    )
    assert pb.command("orders", "info", "--output=json") == [
        "pgbackrest",
        "--config=/var/lib/postgresql/data/temps/pgbackrest.conf",
        "--stanza=orders",
        "info",
        "--output=json",
    ]
    with pytest.raises(ValueError, match="stanza"):
        pb.archive_command("x; rm -rf /")


def test_format_target() -> None:
    paris = timezone(timedelta(hours=1))
    assert pb.format_target(datetime(2026, 12, 3, 21, 7, 0, 123456, tzinfo=paris)) == (
        "2026-12-03 20:07:00.123456+00"
    )
    assert pb.format_target(datetime(2026, 12, 3, 20, 7, tzinfo=UTC)) == (
        "2026-12-03 20:07:00.000000+00"
    )
    with pytest.raises(ValueError, match="timezone"):
        pb.format_target(datetime(2026, 12, 3, 20, 7))


@pytest.mark.parametrize(("text", "label"), [(INFO_233, "233"), (INFO_255, "255")])
def test_parse_info_reads_both_shapes(text: str, label: str) -> None:
    info = pb.parse_info(text, "demo")
    assert info is not None
    assert (info.status_code, info.status_message) == (0, "ok")
    assert [b.type for b in info.backups] == ["full", "incr"]
    full, incr = info.backups
    assert incr.label == f"{full.label}_{incr.label.split('_')[1]}"
    assert full.stopped_at.tzinfo is UTC
    assert full.started_at < full.stopped_at
    assert full.wal_start == "000000010000000000000002"
    assert incr.wal_stop == "000000010000000000000004"
    assert full.size_bytes > full.repo_size_bytes > 0
    assert (info.archive_min, info.archive_max) == (
        "000000010000000000000001",
        "000000010000000000000004",
    )
    if label == "233":
        assert full.stopped_at == datetime.fromtimestamp(1796329668, UTC)
        assert (full.size_bytes, full.repo_size_bytes) == (24424723, 2989852)


def test_parse_info_without_the_stanza_or_before_stanza_create() -> None:
    assert pb.parse_info(INFO_255, "other") is None
    assert pb.parse_info("[]", "demo") is None
    info = pb.parse_info(INFO_MISSING, "demo")
    assert info is not None
    assert (info.status_code, info.status_message) == (1, "missing stanza path")
    assert (info.backups, info.archive_min, info.archive_max) == ([], None, None)
    assert pb.earliest_restorable(info) is None
    assert pb.backup_set_for(info, datetime.now(UTC)) is None


def test_window_and_backup_set() -> None:
    info = pb.parse_info(INFO_255, "demo")
    assert info is not None
    full_stop = datetime.fromtimestamp(1796329677, UTC)
    incr_stop = datetime.fromtimestamp(1796329679, UTC)
    assert pb.earliest_restorable(info) == full_stop + timedelta(seconds=1)
    # before the window (at the first stop itself: no backup stopped strictly before)
    assert pb.backup_set_for(info, full_stop) is None
    assert pb.backup_set_for(info, full_stop - timedelta(hours=1)) is None
    # between the two stops: the older one
    assert pb.backup_set_for(info, full_stop + timedelta(seconds=1)) == "20261203-202753F"
    assert pb.backup_set_for(info, incr_stop) == "20261203-202753F"
    # after the newest
    assert pb.backup_set_for(info, incr_stop + timedelta(microseconds=1)) == (
        "20261203-202753F_20261203-202757I"
    )
    assert pb.backup_set_for(info, incr_stop + timedelta(days=3)) == (
        "20261203-202753F_20261203-202757I"
    )


def test_restore_args() -> None:
    at = datetime(2026, 12, 3, 20, 7, tzinfo=UTC)
    assert pb.restore_args("L", at, delta=False) == [
        "restore",
        "--set=L",
        "--type=time",
        "--target=2026-12-03 20:07:00.000000+00",
        "--target-action=promote",
    ]
    assert pb.restore_args("L", at, delta=True)[-1] == "--delta"
    # no target: replay to the end of the archive (pgBackRest refuses --target-action alone)
    assert pb.restore_args("L", None, delta=True) == ["restore", "--set=L", "--delta"]


def test_without_recovery_target_keeps_restore_command() -> None:
    auto_conf = (
        "# Do not edit this file manually!\n"
        "shared_preload_libraries = 'x'\n"
        "restore_command = 'pgbackrest --config=/c --stanza=s archive-get %f \"%p\"'\n"
        "recovery_target_time = '2026-12-03 20:07:00.000000+00'\n"
        "recovery_target_action = 'promote'\n"
    )
    out = pb.without_recovery_target(auto_conf)
    assert "recovery_target" not in out
    assert "restore_command" in out
    assert "shared_preload_libraries" in out
    assert set(pb.RECOVERY_SETTINGS) == {
        "restore_command",
        "recovery_target_time",
        "recovery_target_action",
    }


def test_is_wal_segment() -> None:
    assert pb.is_wal_segment("00000001000000000000000C")
    assert not pb.is_wal_segment("00000001000000000000000C.00000028.backup")
    assert not pb.is_wal_segment("00000002.history")
    assert not pb.is_wal_segment(None)
