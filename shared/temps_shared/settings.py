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
