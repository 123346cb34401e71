"""Send requests at a fixed rate (open loop: late responses never slow the schedule down)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from kondense.loadgen.requests import cycle


@dataclass
class LoadStats:
    sent: int = 0
    dropped: int = 0  # not sent: too many requests already in flight
    codes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else (lambda q: None)
        return {"sent": self.sent, "dropped": self.dropped, "codes": dict(self.codes), "p50Ms": pick(0.5),
                "p99Ms": pick(0.99)}  # fmt: skip


async def run_load(
    url: str,
    model: str,
    bodies: list[dict[str, Any]],
    rps: float,
    duration_s: float | None,
    max_in_flight: int = 64,
    timeout_s: float = 10.0,
    stop: asyncio.Event | None = None,
) -> LoadStats:
    stats = LoadStats()
    endpoint = f"{url.rstrip('/')}/v2/models/{model}/infer"
    payloads = cycle([orjson.dumps(b) for b in bodies])
    in_flight: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one(payload: bytes) -> None:
            started = time.perf_counter()
            try:
                response = await client.post(
                    endpoint, content=payload, headers={"content-type": "application/json"}
                )
                stats.codes[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                stats.codes[type(exc).__name__] += 1
            stats.latencies_ms.append((time.perf_counter() - started) * 1000)

        start = time.perf_counter()
        i = 0
        while (duration_s is None or time.perf_counter() - start < duration_s) and not (
            stop and stop.is_set()
        ):
            due = start + i / rps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if len(in_flight) >= max_in_flight:
                stats.dropped += 1
                continue
            task = asyncio.create_task(one(next(payloads)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            stats.sent += 1
        if in_flight:
            await asyncio.wait(in_flight, timeout=timeout_s)
    return stats
