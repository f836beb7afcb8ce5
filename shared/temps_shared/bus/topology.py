"""Streams and durable consumers, declared once here; `ensure_topology` creates or updates them.

Workers only bind to the consumers declared here.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

COMMANDS_STREAM = "TEMPS_COMMANDS"
EVENTS_STREAM = "TEMPS_EVENTS"
# The health monitor's observations (one per service and cycle): kept only long enough for the
# health projector to catch up after an outage; the history itself lives in PostgreSQL.
HEALTH_STREAM = "TEMPS_HEALTH"
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_AGE_S = 30 * 24 * 3600.0
HEALTH_MAX_AGE_S = 24 * 3600.0
# Size bounds too, so no publisher (a compromised one included) can fill the disk.
EVENTS_MAX_BYTES = 1024**3
HEALTH_MAX_BYTES = 256 * 1024**2
PROVISIONER_DURABLE = "provisioner"


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float
    max_deliver: int
    max_ack_pending: int
    # Its messages follow the bus contract and are checked before any handler sees them
    # (`envelope.py`); only the delivery-rule tests use private streams without it.
    contract: bool = True

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
        )


def provisioner_consumer(ack_wait_s: float, max_deliver: int) -> ConsumerSpec:
    return ConsumerSpec(
        stream=COMMANDS_STREAM,
        durable=PROVISIONER_DURABLE,
        filter_subject="temps.cmd.provisioner.>",
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=64,
    )


# One event at a time across every projector replica: status transitions apply in stream order.
PROJECTOR_CONSUMER = ConsumerSpec(
    stream=EVENTS_STREAM,
    durable="projector",
    filter_subject="temps.evt.>",
    ack_wait_s=30.0,
    max_deliver=-1,
    max_ack_pending=1,
)


# ProbeNow commands; any monitor replica takes one.
MONITOR_CONSUMER = ConsumerSpec(
    stream=COMMANDS_STREAM,
    durable="monitor",
    filter_subject="temps.cmd.monitor.>",
    ack_wait_s=30.0,
    max_deliver=3,
    max_ack_pending=64,
)

# RunBackup / RestoreBackup; any backup worker replica takes one. A long dump heartbeats
# (`in_progress`), so the ack wait only bounds how soon a dead worker's command comes back.
BACKUP_CONSUMER = ConsumerSpec(
    stream=COMMANDS_STREAM,
    durable="backup",
    filter_subject="temps.cmd.backup.>",
    ack_wait_s=30.0,
    max_deliver=5,
    max_ack_pending=64,
)

# Health observations, one at a time, their stream sequence recorded with the read model.
HEALTH_PROJECTOR_CONSUMER = ConsumerSpec(
    stream=HEALTH_STREAM,
    durable="health-projector",
    filter_subject="temps.health.>",
    ack_wait_s=30.0,
    max_deliver=-1,
    max_ack_pending=1,
)


def stream_configs() -> list[StreamConfig]:
    return [
        StreamConfig(
            name=COMMANDS_STREAM,
            subjects=["temps.cmd.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=["temps.evt.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=EVENTS_MAX_AGE_S,
            max_bytes=EVENTS_MAX_BYTES,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        StreamConfig(
            name=HEALTH_STREAM,
            subjects=["temps.health.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=HEALTH_MAX_AGE_S,
            max_bytes=HEALTH_MAX_BYTES,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
    ]


async def ensure_topology(js: JetStreamContext, consumers: list[ConsumerSpec]) -> None:
    """Create or update every stream and the given consumers (idempotent)."""
    for config in stream_configs():
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    for spec in consumers:
        # CONSUMER.CREATE with a name creates or updates: an existing durable gets the new config.
        await js.add_consumer(spec.stream, spec.config())
