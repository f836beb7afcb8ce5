"""Settings shared by every service, read from `TEMPS_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".temps"


class TempsSettings(BaseSettings):
    """The base every service's settings extend."""

    model_config = SettingsConfigDict(env_prefix="TEMPS_", extra="ignore")

    database_url: SecretStr = Field(
        SecretStr("postgresql://temps:temps@127.0.0.1:5432/temps"),
        description="DSN of the control-plane PostgreSQL database.",
    )
    database_password_file: Path | None = Field(
        None,
        description=(
            "A file holding the control-plane database's password, so that neither the URL nor "
            "the environment carries it (the compose stack hands it so)."
        ),
    )
    nats_url: str = Field(
        "tls://127.0.0.1:4222",
        description=(
            "NATS server with JetStream, over TLS from the installation CA; each service "
            "connects as its role with the credentials in `data_dir`/bus."
        ),
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Holds the master key (encryption_key) and the admin token (admin_token).",
    )
    node_id: str = Field("local", description="Id of the Docker host this agent operates.")
    docker_network: str = Field("temps", description="Private network of service containers.")
    service_addressing: Literal["private", "loopback"] = Field(
        "loopback",
        description=(
            "How workers reach a service: by its container name on the private network "
            "(workers run on that network) or by its loopback publication (workers on the host)."
        ),
    )
    local_port_range: str = Field(
        "20000-29999", description="Loopback ports handed out to service publications."
    )
    command_ack_wait_s: float = Field(
        30.0, description="JetStream ack wait of command consumers; handlers heartbeat within it."
    )
    command_max_deliver: int = Field(
        20, description="Deliveries of one command before it is declared failed."
    )
    images: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            "postgres": {
                "13": "temps/postgres:13",
                "15": "temps/postgres:15",
                "17": "temps/postgres:17",
            },
            "redis": {"6": "temps/redis:6", "7": "temps/redis:7", "8": "temps/redis:8"},
            "s3": {"4": "temps/seaweedfs:4"},
        },
        description=(
            "Service type → major version → image on offer. The images `make images` builds are "
            "the default; configuration may add others honouring the same contract (JSON)."
        ),
    )
    log_level: str = Field("INFO", description="Python logging level.")
    metrics_port: int | None = Field(
        None,
        description=(
            "Workers (provisioner, monitor): serve Prometheus metrics at /metrics on this port; "
            "unset, none are served. The API serves /metrics on its own port."
        ),
    )
    metrics_host: str = Field("127.0.0.1", description="Where a worker's metrics port listens.")
    metrics_queue_sample_s: float = Field(
        15.0, gt=0, description="How often each process samples its consumers' queue depth."
    )

    # The built-in backup store (SeaweedFS, started with the platform): the default destination.
    backup_store_endpoint: str = Field(
        "http://127.0.0.1:8333",
        description="S3 endpoint of the backup store (the built-in SeaweedFS by default).",
    )
    backup_store_region: str = Field("us-east-1", description="Region the store signs for.")
    backup_store_access_key: str = Field("temps-backup", description="S3 access key id.")
    backup_store_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    backup_store_secret_key_file: Path | None = Field(
        None,
        description="A file holding the S3 secret key instead (the compose stack hands the "
        "built-in store's so: `backup_store_secret_key` in the data dir).",
    )
    backup_store_wait_s: float = Field(
        60.0, gt=0, description="How long a starting worker waits for the store to answer."
    )
    backup_store_ca_file: Path | None = Field(
        None, description="CA (PEM) the built-in store's https certificate is checked against."
    )
    backup_bucket: str = Field("temps-backups", description="Bucket every backup goes into.")
    backup_store_service_endpoint: str | None = Field(
        None,
        description=(
            "How service containers reach the built-in store (pgBackRest inside PostgreSQL): an "
            "https URL with a DNS name in the store's certificate; None: the same as "
            "backup_store_endpoint."
        ),
    )
    backup_store_container: str | None = Field(
        None,
        description=(
            "The built-in store's container, where per-service archive identities are "
            "imported; None: the store is not managed by this installation and WAL archiving "
            "to it is unavailable."
        ),
    )

    def store_secret_key(self) -> str:
        """The S3 secret key, from `backup_store_secret_key_file` when set."""
        if self.backup_store_secret_key_file is not None:
            return self.backup_store_secret_key_file.read_text().strip()
        return self.backup_store_secret_key.get_secret_value()

    def database_dsn(self) -> str:
        """The control-plane DSN, with the password of `database_password_file` when set."""
        dsn = self.database_url.get_secret_value()
        if self.database_password_file is None:
            return dsn
        password = quote(self.database_password_file.read_text().strip(), safe="")
        parts = urlsplit(dsn)
        user = quote(parts.username or "", safe="")
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))

    @property
    def port_range(self) -> tuple[int, int]:
        low, _, high = self.local_port_range.partition("-")
        return int(low), int(high)
