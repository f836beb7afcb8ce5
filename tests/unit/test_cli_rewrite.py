"""`temps run`'s address rewriting: private `host:port` → loopback publication, nothing else."""

from __future__ import annotations

import pytest
from temps_cli.rewrite import loopback_map, rewrite_addresses, rewrite_variables

PG = {
    "host": "temps-postgres-db1",
    "port": 5432,
    "local_host": "127.0.0.1",
    "local_port": 21001,
    "database": "postgres",
    "replicas": [
        {
            "member": "replica-1",
            "host": "temps-postgres-db1-replica-1",
            "port": 5432,
            "local_host": "127.0.0.1",
            "local_port": 21002,
        },
        {
            "member": "replica-2",
            "host": "temps-postgres-db1-replica-2",
            "port": 5432,
            "local_host": "127.0.0.1",
            "local_port": 21003,
        },
    ],
}
REDIS = {
    "host": "temps-redis-cache",
    "port": 6379,
    "local_host": "127.0.0.1",
    "local_port": 21010,
    "tls_port": 6380,
    "local_tls_port": 21011,
}
S3 = {
    "host": "temps-s3-files",
    "port": 8333,
    "local_host": "127.0.0.1",
    "local_port": 21020,
    "bucket": "files",
    "scheme": "https",
}
ENDPOINTS = loopback_map([PG, REDIS, S3])


def test_map_has_primary_replicas_and_tls_ports() -> None:
    assert ENDPOINTS == {
        ("temps-postgres-db1", 5432): ("127.0.0.1", 21001),
        ("temps-postgres-db1-replica-1", 5432): ("127.0.0.1", 21002),
        ("temps-postgres-db1-replica-2", 5432): ("127.0.0.1", 21003),
        ("temps-redis-cache", 6379): ("127.0.0.1", 21010),
        ("temps-redis-cache", 6380): ("127.0.0.1", 21011),
        ("temps-s3-files", 8333): ("127.0.0.1", 21020),
    }


def test_map_skips_services_without_a_publication() -> None:
    assert loopback_map([{}, {"host": "temps-redis-x", "port": 6379, "local_port": None}]) == {}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # user:pass@ kept byte for byte, query kept
        (
            "postgresql://app_1:s3cr3t@temps-postgres-db1:5432/shop_production?sslmode=require",
            "postgresql://app_1:s3cr3t@127.0.0.1:21001/shop_production?sslmode=require",
        ),
        # a numeric password looks like host:port but is followed by `@`: not an address
        (
            "postgresql://u:5432@temps-postgres-db1:5432/db",
            "postgresql://u:5432@127.0.0.1:21001/db",
        ),
        ("redis://app:pw@temps-redis-cache:6379/0", "redis://app:pw@127.0.0.1:21010/0"),
        ("rediss://app:pw@temps-redis-cache:6380/0", "rediss://app:pw@127.0.0.1:21011/0"),
        ("https://temps-s3-files:8333", "https://127.0.0.1:21020"),
        ("temps-redis-cache:6379", "127.0.0.1:21010"),  # a bare address
        # libpq's multi-host form
        (
            "postgresql://u:p@temps-postgres-db1-replica-1:5432,temps-postgres-db1-replica-2:5432/db",
            "postgresql://u:p@127.0.0.1:21002,127.0.0.1:21003/db",
        ),
        # unknown hosts, a known host on another port, a longer name with a known prefix: kept
        ("postgresql://u:p@elsewhere:5432/db", "postgresql://u:p@elsewhere:5432/db"),
        (
            "postgresql://u:p@temps-postgres-db1:6543/db",
            "postgresql://u:p@temps-postgres-db1:6543/db",
        ),
        ("https://temps-s3-files-old:8333", "https://temps-s3-files-old:8333"),
        ("no address here", "no address here"),
        ("", ""),
    ],
)
def test_rewrite_addresses(before: str, after: str) -> None:
    assert rewrite_addresses(before, ENDPOINTS) == after


def test_comma_separated_replica_urls_each_rewritten() -> None:
    value = ",".join(
        f"postgresql://u:p@temps-postgres-db1-replica-{n}:5432/db?sslmode=require" for n in (1, 2)
    )
    assert rewrite_addresses(value, ENDPOINTS) == (
        "postgresql://u:p@127.0.0.1:21002/db?sslmode=require,"
        "postgresql://u:p@127.0.0.1:21003/db?sslmode=require"
    )


def test_ipv4_hosts_and_ipv6_publications() -> None:
    endpoints = loopback_map(
        [
            {"host": "10.0.3.7", "port": 5432, "local_host": "127.0.0.1", "local_port": 21001},
            {"host": "10.0.3.8", "port": 6379, "local_host": "::1", "local_port": 21010},
        ]
    )
    assert rewrite_addresses("postgresql://u:p@10.0.3.7:5432/db", endpoints) == (
        "postgresql://u:p@127.0.0.1:21001/db"
    )
    # 10.0.3.70 is another host, not 10.0.3.7 with a trailing digit
    assert rewrite_addresses("postgresql://u:p@10.0.3.70:5432/db", endpoints) == (
        "postgresql://u:p@10.0.3.70:5432/db"
    )
    assert (
        rewrite_addresses("redis://u:p@10.0.3.8:6379/0", endpoints) == "redis://u:p@[::1]:21010/0"
    )


def test_variables_of_three_links() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB temps-postgres-db1:5432\n-----END CERTIFICATE-----\n"
    url = "postgresql://app:pw@temps-postgres-db1:5432/shop?sslmode=require"
    variables = {
        "DATABASE_URL": url,
        "POSTGRES_URL": url,  # the same host in several variables
        "POSTGRES_HOST": "temps-postgres-db1",
        "POSTGRES_PORT": "5432",
        "POSTGRES_DB": "shop",
        "POSTGRES_USER": "app",
        "POSTGRES_PASSWORD": "pw",
        "DATABASE_REPLICA_URL": "postgresql://app:pw@temps-postgres-db1-replica-1:5432/shop",
        "REDIS_URL": "redis://app:pw@temps-redis-cache:6379/0",
        "REDIS_HOST": "temps-redis-cache",
        "REDIS_PORT": "6379",
        "REDIS_USERNAME": "app",
        "REDIS_PASSWORD": "pw",
        "REDIS_KEY_PREFIX": "a",
        "S3_ENDPOINT": "https://temps-s3-files:8333",
        "AWS_ENDPOINT_URL": "https://temps-s3-files:8333",
        "S3_BUCKET": "shop-production",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TEMPS_CA_CERT": pem,
    }
    local = "postgresql://app:pw@127.0.0.1:21001/shop?sslmode=require"
    assert rewrite_variables(variables, ENDPOINTS) == {
        **variables,
        "DATABASE_URL": local,
        "POSTGRES_URL": local,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "21001",
        "DATABASE_REPLICA_URL": "postgresql://app:pw@127.0.0.1:21002/shop",
        "REDIS_URL": "redis://app:pw@127.0.0.1:21010/0",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": "21010",
        "S3_ENDPOINT": "https://127.0.0.1:21020",
        "AWS_ENDPOINT_URL": "https://127.0.0.1:21020",
    }


def test_host_without_a_matching_port_is_kept() -> None:
    variables = {"POSTGRES_HOST": "temps-postgres-db1", "OTHER_HOST": "temps-redis-cache"}
    assert rewrite_variables(variables, ENDPOINTS) == variables
    unknown_port = {"POSTGRES_HOST": "temps-postgres-db1", "POSTGRES_PORT": "1"}
    assert rewrite_variables(unknown_port, ENDPOINTS) == unknown_port
    not_a_port = {"POSTGRES_HOST": "temps-postgres-db1", "POSTGRES_PORT": "********"}
    assert rewrite_variables(not_a_port, ENDPOINTS) == not_a_port


def test_nothing_linked_changes_nothing() -> None:
    variables = {"DATABASE_URL": "postgresql://u:p@temps-postgres-db1:5432/db"}
    assert rewrite_variables(variables, {}) == variables
