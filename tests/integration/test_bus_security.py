"""The bus as a trust boundary, against the real nats-server configured as `make up` does it:
no connection without a role's credentials over TLS, each role confined to its subjects, and a
forged event never reaching a read model."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from temps_shared.bus.codec import MSG_ID_HEADER, TYPE_HEADER
from temps_shared.bus.connect import connect_nats
from temps_shared.bus.credentials import client_credentials
from temps_shared.bus.publish import publish_command
from temps_shared.messages import (
    MONITOR_SOURCE,
    HealthChecked,
    ProbeNow,
    Role,
    ServiceProvisioned,
    ServiceStatus,
    ServiceStatusChanged,
    agent_subject,
)

from tests.support import RUN_PREFIX as P
from tests.support import eventually, nats_refused, wait_status

pytestmark = pytest.mark.asyncio(loop_scope="session")
ATTACKER_INFO = {"host": "attacker.example", "port": 6666, "local_port": 6666}


def _tls(data_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(data_dir / "ca.pem"))


async def test_no_connection_without_the_right_credentials(nats_url: str, data_dir: Path) -> None:
    tls = _tls(data_dir)
    assert "Authorization" in await nats_refused(nats_url, tls=tls)
    assert "Authorization" in await nats_refused(nats_url, tls=tls, user="api", password="wrong")
    api = client_credentials(data_dir, Role.API)
    monitor = client_credentials(data_dir, Role.MONITOR)
    # a role's name with another role's password
    assert "Authorization" in await nats_refused(
        nats_url, tls=tls, user="api", password=monitor.password
    )
    # the right password, but not over TLS (the server requires it)
    plain = nats_url.replace("tls://", "nats://")
    await nats_refused(plain, user=api.user, password=api.password)
    # and not against a server certificate from another CA
    await nats_refused(
        nats_url, tls=ssl.create_default_context(), user="api", password=api.password
    )


@pytest.fixture
async def as_role(nats_url: str, data_dir: Path) -> AsyncIterator[Any]:
    opened: list[Client] = []

    async def connect(role: Role) -> Client:
        nc = await connect_nats(nats_url, role, data_dir, name=f"test-{role}", wait_s=10)
        opened.append(nc)
        return nc

    yield connect
    for nc in opened:
        await nc.close()


async def _published(nc: Client, subject: str, message_type: str, body: bytes) -> bool:
    """Whether JetStream stored it (a permission violation leaves the publish unanswered)."""
    try:
        await nc.jetstream().publish(subject, body, timeout=2, headers={TYPE_HEADER: message_type})
    except Exception:
        return False
    return True


async def test_a_worker_publishes_only_what_its_role_emits(
    platform: Any, as_role: Any, api: httpx.AsyncClient
) -> None:
    monitor, provisioner = await as_role(Role.MONITOR), await as_role(Role.PROVISIONER)
    sid = "00000000-0000-0000-0000-000000000001"
    forged = ServiceProvisioned(service_id=sid, generation=99, connection_info=ATTACKER_INFO)
    body = forged.model_dump_json().encode()
    for origin in (Role.MONITOR, Role.PROVISIONER):  # the monitor posing as anyone
        assert not await _published(monitor, forged.subject(origin), "ServiceProvisioned", body)
    check = HealthChecked.subject_pattern(Role.PROVISIONER, sid)
    assert not await _published(provisioner, check, "HealthChecked", b"{}")
    # JetStream administration: no worker deletes or purges a stream
    for nc in (monitor, provisioner):
        with pytest.raises(nats.errors.TimeoutError):  # the server drops the request
            await nc.jetstream(timeout=2).delete_stream("TEMPS_EVENTS")
        assert "permissions violation" in str(nc.last_error)
    assert (await api.get("/api/health")).status_code == 200


async def test_only_the_gateway_calls_the_host_agent(platform: Any, as_role: Any) -> None:
    subject = agent_subject(platform.api_settings().node_id, "host")
    api = await as_role(Role.API)
    reply = await api.request(subject, b"{}", timeout=10)
    assert b'"ok":true' in reply.data
    for role in (Role.MONITOR, Role.PROVISIONER, Role.AGENT):
        nc = await as_role(role)
        with pytest.raises(nats.errors.TimeoutError):  # the server drops the request
            await nc.request(subject, b"{}", timeout=2)
        assert "permissions violation" in str(nc.last_error)
    # nor can a role read another role's replies
    monitor = await as_role(Role.MONITOR)
    await monitor.subscribe("_INBOX_api.>")
    await monitor.flush()
    await eventually(
        lambda: _true(monitor.last_error is not None), 5, "the server to refuse the subscription"
    )
    assert "permissions violation" in str(monitor.last_error)


async def _true(value: bool) -> bool:
    return value


async def test_a_forged_event_never_reaches_the_read_model(
    platform: Any, api: httpx.AsyncClient, as_role: Any
) -> None:
    created = await api.post(
        "/api/external-services",
        json={"name": f"{P}forged", "service_type": "redis", "parameters": {"memory_mb": 64}},
    )
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    before = await wait_status(api, sid, "operational")
    provisioner = await as_role(Role.PROVISIONER)
    js = provisioner.jetstream()
    forged = ServiceProvisioned(service_id=sid, generation=99, connection_info=ATTACKER_INFO)
    smuggled = ServiceStatusChanged(
        service_id=sid, status=ServiceStatus.DOWN, source=MONITOR_SOURCE, generation=99
    )
    # Subjects the provisioner may publish on, carrying what it may not say there: another
    # type than the subject names, and a monitor's verdict from the provisioner.
    attempts = [
        (smuggled.subject(Role.PROVISIONER), "ServiceProvisioned", forged),
        (smuggled.subject(Role.PROVISIONER), "ServiceStatusChanged", smuggled),
    ]
    last_seq = 0
    for subject, type_name, message in attempts:
        ack = await js.publish(
            subject,
            message.model_dump_json().encode(),
            headers={TYPE_HEADER: type_name, MSG_ID_HEADER: str(message.message_id)},
        )
        last_seq = ack.seq

    api_nc = await as_role(Role.API)

    async def projector_passed() -> bool:
        info = await api_nc.jetstream().consumer_info("TEMPS_EVENTS", "projector")
        return info.ack_floor.stream_seq >= last_seq

    await eventually(projector_passed, 30, "the projector to settle the forged events")
    after = (await api.get(f"/api/external-services/{sid}")).json()
    assert after["status"] == "operational"
    assert after["connection_info"] == before["connection_info"]
    assert "attacker" not in (await api.get(f"/api/external-services/{sid}/credentials")).text
    assert (await api.delete(f"/api/external-services/{sid}")).status_code == 202


async def test_a_fetch_bounced_to_the_agent_is_not_acted_upon(
    platform: Any, as_role: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker may fetch from its own consumer and name any reply subject: the server then
    delivers the command there, past the worker's publish permissions. Named the host agent's
    subject, the delivery must be refused by the agent (its reply is no gateway inbox), not run
    as a request."""
    provisioner, monitor = await as_role(Role.PROVISIONER), await as_role(Role.MONITOR)
    probe = ProbeNow(service_id=uuid4(), reason="bait")
    await publish_command(provisioner.jetstream(), probe, origin=Role.PROVISIONER)
    caplog.set_level(logging.WARNING, logger="temps_provisioner.agent")
    await monitor.publish(
        "$JS.API.CONSUMER.MSG.NEXT.TEMPS_COMMANDS.monitor",
        b'{"batch": 1, "expires": 2000000000}',
        reply=agent_subject(platform.api_settings().node_id, "apply-resources"),
    )

    async def refused() -> bool:
        return any("refused an agent request" in r.getMessage() for r in caplog.records)

    await eventually(refused, 10, "the agent to refuse the bounced delivery")
    # Settle the bait as the monitor would (a proper fetch to its own inbox).
    sub = await monitor.jetstream().pull_subscribe_bind(durable="monitor", stream="TEMPS_COMMANDS")
    for msg in await sub.fetch(1, timeout=40):  # redelivered after the ack wait
        await msg.term()
