"""One fault-injection trial: a seeded workload on the platform while faults are injected at
random moments, then the invariants.

The seed decides the services, the operations, their order and pauses, the faults, their targets,
moments and downtimes; the interleaving of the two tasks also depends on timing, so a replayed
seed repeats the same trial, not the same microsecond schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import asyncpg
import docker
import httpx
import redis.asyncio as aioredis
from nats.js.api import ConsumerConfig, DeliverPolicy
from temps_shared.bus.topology import EVENTS_STREAM
from temps_shared.messages import Role

from tests.faults.conftest import RESYNC_PERIOD_S, Cluster
from tests.support import RUN_PREFIX

REQUEST_BOUND_S = 60.0  # an accepted answer (or a definite refusal) within this, faults or not
CONVERGE_BOUND_S = 90.0  # every service in its desired state within this after the last fault
PORT_RELEASE_BOUND_S = 2 * RESYNC_PERIOD_S + 20  # a deleted service's ports given back
MAX_LIVE = 3  # services alive at once (2 cores)
PROCESS_FAULTS = ("kill_api", "kill_provisioner", "kill_monitor")
FAULTS = (*PROCESS_FAULTS, "kill_nats", "kill_db", "pause_db", "rm_member", "kill_member")
MANAGED = "io.temps.managed=true"


class TrialFailure(AssertionError):
    pass


@dataclass
class Answer:
    status: int
    body: Any
    doubtful: bool  # an earlier attempt may have taken effect (no answer, or a 5xx)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def code(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code", ""))
        return ""


@dataclass
class Tracked:
    """What the workload asked of one service, and what it may expect."""

    name: str
    kind: str
    id: str
    params: dict[str, Any]
    desired: str = "running"  # running | stopped | deleted
    bumps: int = 0  # accepted requests after the create: each is one generation
    maybe: int = 0  # requests that may have taken effect once more than their answers say
    linked: bool | None = False  # None: unknown (a link request's answer was lost)
    rotated: bool = False
    first_secret: str = ""
    ports: set[int] = field(default_factory=set)
    data: tuple[str, str] | None = None  # (key or table, value) written before the faults
    converged_s: float = 0.0


@dataclass
class Report:
    seed: int
    services: int = 0
    accepted: int = 0
    refused: int = 0
    doubtful: int = 0
    retried: int = 0  # requests retried after no answer or a 5xx (the same key when keyed)
    faults: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    longest_convergence_s: float = 0.0
    longest_service: str = ""
    duration_s: float = 0.0


REPORTS: list[Report] = []


def _text(value: bytes | str | None) -> str:
    return (
        value.decode() if isinstance(value, bytes) else str(value)
    )  # the session's passed trials, for the summary


class Trial:
    def __init__(self, cluster: Cluster, api: httpx.AsyncClient, seed: int, index: int) -> None:
        self.cluster = cluster
        self.api = api
        self.seed = seed
        self.rng = random.Random(seed)
        self.tag = f"{RUN_PREFIX}f{index}{''.join(self.rng.choices('abcdefghij', k=3))}"
        self.services: list[Tracked] = []
        self.project_id = ""
        self.secrets: set[str] = set()
        self.report = Report(seed)
        self.started = time.monotonic()
        self.killed: set[str] = set()  # roles the injector holds down right now

    def log(self, line: str) -> None:
        self.report.faults.append(f"{time.monotonic() - self.started:6.1f}s {line}")

    # ---- requests ---------------------------------------------------------------------------

    async def call(
        self, method: str, path: str, body: Any = None, *, idempotent: bool = False
    ) -> Answer:
        """One request, retried on no answer or a 5xx (with the same Idempotency-Key when the
        route takes one) until a definite answer; fails the trial after REQUEST_BOUND_S."""
        headers = {"Idempotency-Key": uuid4().hex} if idempotent else {}
        doubtful = False
        deadline = time.monotonic() + REQUEST_BOUND_S
        for _ in range(200):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = await self.api.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                doubtful = True
                await self.cluster.api_healthy(min(remaining, 10))
                continue
            if response.status_code >= 500:
                doubtful = True
                await asyncio.sleep(0.5)
                continue
            parsed = response.json() if response.content else None
            answer = Answer(response.status_code, parsed, doubtful and not idempotent)
            self.report.retried += doubtful
            self.report.accepted += answer.accepted
            self.report.refused += not answer.accepted
            self.report.doubtful += answer.doubtful
            return answer
        raise TrialFailure(f"{method} {path}: no answer but 5xx/none within {REQUEST_BOUND_S}s")

    def count(self, svc: Tracked, answer: Answer) -> None:
        svc.bumps += answer.accepted
        svc.maybe += answer.doubtful

    async def get_service(self, svc: Tracked) -> httpx.Response:
        return await self.api.get(f"/api/external-services/{svc.id}")

    # ---- the workload -----------------------------------------------------------------------

    def live(self) -> list[Tracked]:
        return [s for s in self.services if s.desired != "deleted"]

    async def create(self, kind: str) -> Tracked:
        name = f"{self.tag}{len(self.services)}"
        params: dict[str, Any]
        body: dict[str, Any] = {"name": name, "service_type": kind}
        if kind == "redis":
            params = {"memory_mb": 64, "persistence": "aof"}
            body["version"] = self.rng.choice(["6", "7", "8"])
        elif kind == "postgres":
            params = {"replicas": 0, "memory_mb": 256, "storage_gb": 1, "backups": False}
        else:
            params = {"size_gb": 1}
        body["parameters"] = params
        answer = await self.call("POST", "/api/external-services", body, idempotent=True)
        assert answer.status == 202, f"create {name}: {answer.status} {answer.body}"
        svc = Tracked(name, kind, answer.body["id"], dict(params))
        self.services.append(svc)
        self.report.services += 1
        return svc

    async def update(self, svc: Tracked) -> None:
        change: dict[str, Any]
        if svc.kind == "redis":
            change = self.rng.choice(
                [
                    {"eviction": self.rng.choice(["noeviction", "allkeys-lfu", "volatile-lru"])},
                    {"memory_mb": self.rng.choice([48, 64, 96])},
                    {"maxclients": self.rng.choice([500, 1000, 10000])},
                ]
            )
        elif svc.kind == "postgres":
            change = {"memory_mb": self.rng.choice([256, 320])}  # a restart
        else:
            change = self.rng.choice(
                [{"versioning": self.rng.random() < 0.5}, {"public_read": self.rng.random() < 0.5}]
            )
        answer = await self.call(
            "PATCH", f"/api/external-services/{svc.id}", {"parameters": change}
        )
        self.count(svc, answer)
        if answer.accepted or answer.doubtful:  # the same body twice stores the same values
            svc.params.update(change)

    async def link(self, svc: Tracked) -> None:
        answer = await self.call(
            "POST",
            f"/api/external-services/{svc.id}/projects",
            {"project_id": self.project_id, "environment": "production"},
        )
        self.count(svc, answer)
        if answer.accepted:
            svc.linked = True
        elif answer.doubtful:
            svc.linked = None

    async def unlink(self, svc: Tracked) -> None:
        answer = await self.call(
            "DELETE",
            f"/api/external-services/{svc.id}/projects/{self.project_id}",
        )
        self.count(svc, answer)
        if answer.accepted or answer.status == 404:
            svc.linked = False
        elif answer.doubtful:
            svc.linked = None

    async def simple(self, svc: Tracked, verb: str) -> None:
        """stop, start or rotate-credentials (Idempotency-Key: exactly one effect)."""
        answer = await self.call("POST", f"/api/external-services/{svc.id}/{verb}", idempotent=True)
        self.count(svc, answer)
        if answer.accepted and verb in ("stop", "start"):
            svc.desired = "stopped" if verb == "stop" else "running"
        if answer.accepted and verb == "rotate-credentials":
            svc.rotated = True
        if not answer.accepted and answer.code not in ("rotation_in_progress",):
            raise TrialFailure(f"{verb} {svc.name}: {answer.status} {answer.body}")

    async def delete(self, svc: Tracked) -> None:
        if svc.linked is not False:
            await self.unlink(svc)
        answer = await self.call("DELETE", f"/api/external-services/{svc.id}")
        self.count(svc, answer)
        if answer.accepted or (answer.doubtful and answer.status in (404, 409)):
            svc.desired = "deleted"
        elif answer.code == "linked":  # the unlink's answer was lost: it is still pending
            return
        else:
            raise TrialFailure(f"delete {svc.name}: {answer.status} {answer.body}")

    async def random_operation(self) -> None:
        live = self.live()
        kinds = {s.kind for s in live}
        choices = ["update", "update", "link", "rotate", "stop", "start", "delete", "unlink"]
        if len(live) < MAX_LIVE:
            choices.append("create")
        op = self.rng.choice(choices)
        if op == "create" or not live:
            kind = "redis" if "redis" not in kinds or self.rng.random() < 0.8 else "s3"
            if kind == "s3" and "s3" in kinds:
                kind = "redis"
            svc = await self.create(kind)
            self.log(f"op create {svc.kind} {svc.name}")
            return
        svc = self.rng.choice(live)
        self.log(f"op {op} {svc.name}")
        if op == "update":
            await self.update(svc)
        elif op == "link":
            if svc.linked is False:
                await self.link(svc)
        elif op == "unlink":
            if svc.linked is not False:
                await self.unlink(svc)
        elif op == "rotate":
            await self.simple(svc, "rotate-credentials")
        elif op in ("stop", "start"):
            await self.simple(svc, op)
        else:
            await self.delete(svc)

    # ---- faults -----------------------------------------------------------------------------

    async def inject(self, fault: str) -> None:
        rng, cluster = self.rng, self.cluster
        downtime = rng.uniform(0.3, 3.0)
        if fault in PROCESS_FAULTS:
            role = fault.removeprefix("kill_")
            self.killed.add(role)
            cluster.supervisor.kill(role)
            self.log(f"FAULT SIGKILL {role}, {downtime:.1f}s down")
            await asyncio.sleep(downtime)
            cluster.supervisor.start(role)
            self.killed.discard(role)
        elif fault == "kill_nats":
            cluster.nats.kill()
            self.log(f"FAULT SIGKILL nats-server, {downtime:.1f}s down")
            await asyncio.sleep(downtime)
            cluster.nats.start()
        elif fault == "kill_db":
            await asyncio.to_thread(cluster.db.kill)
            self.log(f"FAULT docker kill control-plane db, {downtime:.1f}s down")
            await asyncio.sleep(downtime)
            await asyncio.to_thread(cluster.db.start)
            await cluster.db.wait_ready()
        elif fault == "pause_db":
            await asyncio.to_thread(cluster.db.pause)
            self.log(f"FAULT docker pause control-plane db, {downtime:.1f}s")
            await asyncio.sleep(downtime)
            await asyncio.to_thread(cluster.db.unpause)
        else:
            members = await asyncio.to_thread(self.members_of, [s.id for s in self.live()])
            if not members:
                self.log(f"FAULT {fault}: no member to hit")
                return
            target, _ = rng.choice(members)
            api = cluster.docker.api
            # Gone meanwhile (a delete, a recreate) or not running: nothing to hit.
            with contextlib.suppress(docker.errors.APIError):
                if fault == "rm_member":
                    await asyncio.to_thread(api.remove_container, target, force=True)
                else:
                    await asyncio.to_thread(api.kill, target)
            self.log(f"FAULT {'docker rm -f' if fault == 'rm_member' else 'docker kill'} {target}")

    async def fault_injector(self, count: int, window_s: float) -> None:
        moments = sorted(self.rng.uniform(0, window_s) for _ in range(count))
        chosen = [self.rng.choice(FAULTS) for _ in range(count)]
        begun = time.monotonic()
        for moment, fault in zip(moments, chosen, strict=True):
            await asyncio.sleep(max(0.0, begun + moment - time.monotonic()))
            await self.inject(fault)

    async def supervise(self, *work: Any) -> None:
        """Run `work`; meanwhile restart a platform process that died on its own within a second,
        as compose's `restart: unless-stopped` does (the suite's own kills are restarted by the
        injector)."""
        done = asyncio.Event()

        async def watch() -> None:
            for _ in range(100_000):  # bounded by the work's own bounds; ends with it
                if done.is_set():
                    return
                for role in self.cluster.supervisor.restart_dead(skip=self.killed):
                    self.log(f"{role} died on its own; restarted")
                    self.report.unexpected_exits.append(role)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 1.0)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*work)
        finally:
            done.set()
            await watcher

    async def workload(self, operations: int) -> None:
        for _ in range(operations):
            await self.random_operation()
            await asyncio.sleep(self.rng.uniform(0.1, 1.2))

    # ---- Docker and the database, as they really are ----------------------------------------

    def members_of(self, ids: list[str]) -> list[tuple[str, str]]:
        """(name, state) of the services' containers: one listing call (the high-level list
        inspects each container, which races with a concurrent removal)."""
        found: list[tuple[str, str]] = []
        for service_id in ids:
            for c in self.cluster.docker.api.containers(
                all=True, filters={"label": [MANAGED, f"io.temps.service-id={service_id}"]}
            ):
                found.append((str(c["Names"][0]).lstrip("/"), str(c["State"])))
        return sorted(found)

    def docker_state(self, service_id: str) -> tuple[list[tuple[str, str]], list[str]]:
        volumes = self.cluster.docker.api.volumes(
            filters={"label": [MANAGED, f"io.temps.service-id={service_id}"]}
        )
        names = sorted(str(v["Name"]) for v in (volumes or {}).get("Volumes") or [])
        return self.members_of([service_id]), names

    async def db_fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.cluster.db.url, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    # ---- convergence ------------------------------------------------------------------------

    async def converged(self, svc: Tracked) -> str | None:
        """None when the service is as desired; else what is still off."""
        try:
            response = await self.get_service(svc)
        except httpx.TransportError as exc:
            return f"API: {exc!r}"
        containers, volumes = await asyncio.to_thread(self.docker_state, svc.id)
        expected = [f"temps-{svc.kind}-{svc.name}"]
        if svc.kind == "postgres":  # every PostgreSQL service has its pooler
            expected.append(f"temps-{svc.kind}-{svc.name}-pooler")
        if svc.desired == "deleted":
            if response.status_code != 404:
                return f"still there: {response.status_code} {response.text[:200]}"
            if containers or volumes:
                return f"orphans: containers {containers}, volumes {volumes}"
            return None
        if response.status_code != 200:
            return f"GET {response.status_code}"
        body = response.json()
        status, reason = body["status"], body.get("status_reason")
        if body["observed_generation"] != body["generation"]:
            return f"generation {body['generation']} observed {body['observed_generation']}"
        if svc.desired == "running":
            if status != "operational":
                return f"status {status} ({reason})"
            if containers != [(name, "running") for name in expected]:
                return f"containers {containers}"
        else:
            if status != "stopped":
                return f"status {status} ({reason})"
            if any(state == "running" for _, state in containers):
                return f"containers {containers}"
        return None

    async def converge_all(self, what: str) -> None:
        """Every service in its desired state within CONVERGE_BOUND_S; each one's time."""
        begun = time.monotonic()
        pending = list(self.services)
        last: dict[str, str | None] = {}
        while pending and time.monotonic() - begun < CONVERGE_BOUND_S:
            still = []
            for svc in pending:
                last[svc.name] = await self.converged(svc)
                if last[svc.name] is None:
                    svc.converged_s = time.monotonic() - begun
                    if svc.converged_s > self.report.longest_convergence_s:
                        self.report.longest_convergence_s = svc.converged_s
                        self.report.longest_service = f"{svc.kind} {svc.name} ({what})"
                else:
                    still.append(svc)
            pending = still
            if pending:
                await asyncio.sleep(0.5)
        if pending:
            raise TrialFailure(
                f"not converged {CONVERGE_BOUND_S}s after {what}: "
                + "; ".join(f"{s.kind} {s.name} ({s.desired}): {last[s.name]}" for s in pending)
            )

    # ---- data and secrets -------------------------------------------------------------------

    async def credentials(self, svc: Tracked) -> dict[str, Any]:
        answer = await self.call("GET", f"/api/external-services/{svc.id}/credentials")
        assert answer.status == 200, f"credentials {svc.name}: {answer.status} {answer.body}"
        creds: dict[str, Any] = answer.body
        for key in ("password", "secret_key"):
            if isinstance(creds.get(key), str):
                self.secrets.add(creds[key])
        return creds

    async def write_data(self, svc: Tracked) -> None:
        creds = await self.credentials(svc)
        svc.first_secret = str(creds.get("password") or creds.get("secret_key"))
        value = uuid4().hex
        deadline = time.monotonic() + 30
        while True:
            try:
                if svc.kind == "redis":
                    async with aioredis.Redis.from_url(creds["local_connection_url"]) as client:
                        await client.set("faults:kept", value)
                    svc.data = ("faults:kept", value)
                elif svc.kind == "postgres":
                    conn = await asyncpg.connect(
                        creds["local_connection_url"], ssl="require", timeout=10
                    )
                    try:
                        await conn.execute("CREATE TABLE IF NOT EXISTS kept (v text)")
                        await conn.execute("INSERT INTO kept VALUES ($1)", value)
                    finally:
                        await conn.close()
                    svc.data = ("kept", value)
                return
            except (OSError, aioredis.RedisError, asyncpg.PostgresError) as exc:
                if time.monotonic() > deadline:
                    raise TrialFailure(f"could not write to {svc.name}: {exc!r}") from exc
                await asyncio.sleep(0.5)

    async def read_data(self, svc: Tracked, creds: dict[str, Any]) -> str | None:
        if svc.kind == "redis":
            async with aioredis.Redis.from_url(creds["local_connection_url"]) as client:
                value = await client.get("faults:kept")
                return value.decode() if isinstance(value, bytes) else value
        conn = await asyncpg.connect(creds["local_connection_url"], ssl="require", timeout=10)
        try:
            rows = await conn.fetch("SELECT v FROM kept")
        finally:
            await conn.close()
        values = [r["v"] for r in rows]
        assert len(values) == 1, f"{svc.name}: rows {values} (written once)"
        return str(values[0])

    async def old_secret_refused(self, svc: Tracked, creds: dict[str, Any]) -> bool:
        url = str(creds["local_connection_url"]).replace(
            quote(str(creds["password"]), safe=""), quote(svc.first_secret, safe="")
        )
        try:
            if svc.kind == "redis":
                async with aioredis.Redis.from_url(url) as client:
                    await client.ping()
            else:
                conn = await asyncpg.connect(url, ssl="require", timeout=10)
                await conn.close()
        except (aioredis.AuthenticationError, aioredis.ResponseError):
            return True
        except asyncpg.InvalidPasswordError:
            return True
        return False

    async def redis_config(self, creds: dict[str, Any]) -> dict[str, str]:
        async with aioredis.Redis.from_url(creds["local_connection_url"]) as client:
            found: dict[Any, Any] = await client.config_get("*")
        return {_text(k): _text(v) for k, v in found.items()}

    async def scan_events(self) -> int:
        """Every message of TEMPS_EVENTS, read as the api role: no secret in data or headers."""
        secrets = sorted((s for s in self.secrets if len(s) >= 8), key=len, reverse=True)
        if not secrets:
            return 0
        pattern = re.compile("|".join(re.escape(s) for s in secrets).encode())
        nc = await self.cluster.bus(Role.API)
        try:
            js = nc.jetstream()
            last = (await js.stream_info(EVENTS_STREAM)).state.last_seq
            sub = await js.subscribe(
                "temps.evt.>",
                stream=EVENTS_STREAM,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            seen = 0
            for _ in range(last + 1):
                if seen >= last:
                    break
                msg = await sub.next_msg(timeout=10)
                seen = msg.metadata.sequence.stream
                blob = msg.data + repr(sorted((msg.headers or {}).items())).encode()
                hit = pattern.search(blob)
                assert hit is None, f"a secret in event #{seen} ({msg.subject})"
            await sub.unsubscribe()
            return seen
        finally:
            await nc.close()

    # ---- the invariants ---------------------------------------------------------------------

    async def check_invariants(self) -> None:
        names = [s.name for s in self.services]
        listed = (await self.call("GET", "/api/external-services")).body
        mine = [s["name"] for s in listed if s["name"].startswith(self.tag)]
        assert sorted(mine) == sorted(s.name for s in self.live()), (
            f"services {sorted(mine)}, accepted creates alive {sorted(names)}"
        )
        for svc in self.live():
            body = (await self.get_service(svc)).json()
            generation = body["generation"]
            low, high = 1 + svc.bumps, 1 + svc.bumps + svc.maybe
            assert low <= generation <= high, (
                f"{svc.name}: generation {generation}, accepted requests say {low}..{high}"
            )
            for key, value in svc.params.items():
                assert body["parameters"].get(key) == value, (
                    f"{svc.name}: parameter {key}={body['parameters'].get(key)!r}, asked {value!r}"
                )
            if body.get("connection_info"):
                svc.ports.add(int(body["connection_info"]["local_port"]))
            links = (await self.call("GET", f"/api/external-services/{svc.id}/projects")).body
            active = [
                link
                for link in links
                if link["project_id"] == self.project_id and link["status"] == "active"
            ]
            allowed = {True: [1], False: [0], None: [0, 1]}[svc.linked]
            assert len(active) in allowed, f"{svc.name}: active links {active}, linked={svc.linked}"
            creds = await self.credentials(svc)
            if svc.kind == "redis":
                config = await self.redis_config(creds)
                assert config["maxmemory-policy"] == svc.params.get("eviction", "allkeys-lru")
                assert int(config["maxmemory"]) == svc.params["memory_mb"] * 1024 * 1024
                assert config["maxclients"] == str(svc.params.get("maxclients", 10000))
            current = str(creds.get("password") or creds.get("secret_key"))
            if svc.rotated:
                assert current != svc.first_secret, f"{svc.name}: rotated, same secret"
                if svc.kind in ("redis", "postgres"):
                    assert await self.old_secret_refused(svc, creds), (
                        f"{svc.name}: the secret from before the rotation still works"
                    )
            if svc.data is not None:
                value = await self.read_data(svc, creds)
                assert value == svc.data[1], f"{svc.name}: data {value!r}, wrote {svc.data[1]!r}"
        revealed = await self.api.get(
            f"/api/projects/{self.project_id}/environments/production/variables",
            params={"reveal": "true"},
        )
        assert revealed.status_code == 200, revealed.text
        for key, value in revealed.json()["variables"].items():
            if ("PASSWORD" in key or "SECRET" in key) and isinstance(value, str):
                self.secrets.add(value)
        await self.scan_events()

    async def check_released(self, deleted: list[Tracked]) -> None:
        """No port of a deleted service still reserved; none listening unless a live one's."""
        ids = [s.id for s in deleted]
        deadline = time.monotonic() + PORT_RELEASE_BOUND_S
        rows: list[asyncpg.Record] = []
        while time.monotonic() < deadline:
            rows = await self.db_fetch(
                "SELECT service_id, local_port FROM service_ports"
                " WHERE service_id = ANY($1::uuid[])",
                ids,
            )
            if not rows:
                break
            await asyncio.sleep(1)
        assert not rows, f"ports of deleted services still reserved: {[dict(r) for r in rows]}"

    # ---- the trial --------------------------------------------------------------------------

    async def run(self) -> Report:
        rng = self.rng
        await self.restore()
        project = await self.call("POST", "/api/projects", {"name": self.tag}, idempotent=True)
        assert project.status == 201, f"project: {project.status} {project.body}"
        self.project_id = project.body["id"]
        # Before the faults: up to three services, Redis mostly, data written in each.
        kinds = ["redis"]
        extra = rng.random()
        kinds.append("postgres" if extra < 0.3 else "s3" if extra < 0.55 else "redis")
        if rng.random() < 0.4:
            kinds.append("redis")
        for kind in kinds:
            await self.create(kind)
        await self.converge_all("the creates")
        for svc in self.services:
            await self.write_data(svc)
        # Chaos: the workload and the faults at once.
        operations = rng.randint(8, 14)
        faults = rng.randint(3, 5)
        await self.supervise(
            self.workload(operations), self.fault_injector(faults, operations * 0.9)
        )
        await self.restore()
        await self.converge_all("the faults")
        # Everything running again (a stopped service's data and secret are checked too).
        for svc in self.live():
            if svc.desired == "stopped":
                await self.simple(svc, "start")
        await self.converge_all("the final starts")
        await self.check_invariants()
        # Clean up: every delete accepted and collected.
        await self.supervise(self.delete_all(), self.fault_injector(rng.randint(0, 1), 2.0))
        await self.restore()
        still_live = self.live()
        assert not still_live, f"not deletable: {[s.name for s in still_live]}"
        await self.converge_all("the deletes")
        await self.check_released(self.services)
        self.report.duration_s = time.monotonic() - self.started
        return self.report

    async def restore(self) -> None:
        for role in await self.cluster.restore():
            self.log(f"{role} had died on its own; restarted")
            self.report.unexpected_exits.append(role)

    async def delete_all(self) -> None:
        for _ in range(3):  # an unlink's lost answer can leave a delete refused once
            for svc in self.live():
                await self.delete(svc)
            if not self.live():
                return
            await asyncio.sleep(2)

    async def cleanup(self) -> None:
        """After a failed trial: best effort, so the next trial starts clean."""
        with contextlib.suppress(Exception):
            await self.cluster.restore()
        for svc in self.services:
            with contextlib.suppress(Exception):
                await self.api.delete(f"/api/external-services/{svc.id}/projects/{self.project_id}")
                await self.api.delete(f"/api/external-services/{svc.id}")
        with contextlib.suppress(Exception):
            for name, _ in await asyncio.to_thread(self.members_of, [s.id for s in self.services]):
                await asyncio.to_thread(self.cluster.docker.api.remove_container, name, force=True)
