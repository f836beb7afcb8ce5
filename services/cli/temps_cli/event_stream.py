"""Reading /api/events (Server-Sent Events): the frames parsed (pure), and a feed that reads the
stream on a thread of its own, so a caller can wait for the next event with a timeout, poll
something else meanwhile, and stop whenever it likes."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from temps_cli.client import ApiProblem, CliError, ExitCode, TempsClient

# The API sends a keepalive every 15 s: a stream silent for longer than this is broken.
STREAM_TIMEOUT = httpx.Timeout(45.0, connect=5.0)
CONNECTED = "connected"  # the comment the API sends once its subscription is in place


@dataclass(frozen=True)
class ServiceEvent:
    """One bus event as /api/events sends it."""

    seq: int | None
    type: str
    service_id: str
    occurred_at: datetime | None
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def generation(self) -> int | None:
        value = self.payload.get("generation")
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class StreamEnded:
    """The stream is over: the API ended it (`stream_ended`) or it could not be read."""

    reason: str
    exit_code: int = ExitCode.PLATFORM


@dataclass(frozen=True)
class Frame:
    """One SSE frame: `comment` for `: …` lines, else the event's id, name and data."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: str | None = None


def parse_frames(lines: Iterable[str]) -> Iterator[Frame]:
    """SSE frames from the stream's lines (comments are passed on as frames of their own)."""
    event, data, event_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                yield Frame(event, "\n".join(data), event_id)
            event, data, event_id = "message", [], None
        elif line.startswith(":"):
            yield Frame(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value


def to_item(frame: Frame) -> ServiceEvent | StreamEnded | None:
    """What a frame means for a reader (None: nothing to act on)."""
    if frame.comment is not None:
        return None
    body = json.loads(frame.data)
    if frame.event == "stream_ended":
        return StreamEnded(
            f"the API ended the event stream ({body.get('reason')})", ExitCode.DENIED
        )
    occurred = body.get("occurred_at")
    return ServiceEvent(
        seq=int(frame.id) if frame.id and frame.id.isdigit() else None,
        type=str(body.get("type") or frame.event),
        service_id=str(body.get("service_id") or ""),
        occurred_at=datetime.fromisoformat(occurred) if occurred else None,
        payload=body.get("payload") or {},
    )


def _refusal(response: httpx.Response) -> ApiProblem:
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    return ApiProblem(response.status_code, f"/api/events: {message}")


class EventFeed:
    """/api/events[?service_id=] from `after` (a stream sequence; 0: the whole history; None:
    only new events), read on a daemon thread into a queue."""

    def __init__(
        self, client: TempsClient, service_id: str | None = None, after: int | None = None
    ) -> None:
        self._client = client
        self._params = {"service_id": service_id} if service_id else {}
        self._headers = {"Last-Event-ID": str(after)} if after is not None else {}
        self._items: queue.Queue[ServiceEvent | StreamEnded] = queue.Queue()
        self.connected = threading.Event()
        self.ended: StreamEnded | None = None
        self._stop = threading.Event()

    def __enter__(self) -> EventFeed:
        threading.Thread(target=self._read, name="temps-events", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        # The reader notices at its next line (a keepalive at the latest); as a daemon thread
        # it never holds the process up.
        self._stop.set()

    def next(self, timeout_s: float) -> ServiceEvent | StreamEnded | None:
        """The next event, or the end of the stream (once), or None after `timeout_s`."""
        try:
            item = self._items.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        if isinstance(item, StreamEnded):
            self.ended = item
        return item

    def _read(self) -> None:
        try:
            self._items.put(self._stream() or StreamEnded("the API closed the event stream"))
        except CliError as exc:
            self._items.put(StreamEnded(exc.message, exc.exit_code))
        except (httpx.HTTPError, ValueError) as exc:
            self._items.put(StreamEnded(f"the event stream broke: {exc or type(exc).__name__}"))
        finally:
            self.connected.set()  # nobody waits for a connection that will not come

    def _stream(self) -> StreamEnded | None:
        # The invocation's own HTTP client (its address, token and, in tests, transport).
        with self._client._http.stream(
            "GET",
            "/api/events",
            params=self._params,
            headers=self._headers,
            timeout=STREAM_TIMEOUT,
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise _refusal(response)
            for frame in parse_frames(response.iter_lines()):
                if self._stop.is_set():
                    return None
                if frame.comment == CONNECTED:
                    self.connected.set()
                item = to_item(frame)
                if isinstance(item, StreamEnded):
                    return item
                if item is not None:
                    self._items.put(item)
        return None
