"""Locust simulated users for the marketplace: the read-heavy mix of marketplace.workload.Mix.

Run by bench/load/run.py (which starts the servers and writes the catalog); the environment
carries what it needs:

* ``LOAD_SERVERS``: two base URLs, ``http://127.0.0.1:8101,http://127.0.0.1:8102`` (two uvicorn
  processes sharing PostgreSQL and Redis);
* ``LOAD_CATALOG``: the JSON catalog of ids (marketplace.workload.Catalog);
* ``LOAD_REPORT``: where to write the consistency counters at the end;
* ``LOAD_WAIT``: think time between a simulated user's requests, ``min,max`` seconds;
* ``LOAD_MIX``: ``mixed`` (the default: the mix's reads and writes), ``reads`` (its reads
  alone: the capacity of the read endpoints, measured with no think time), ``writes`` (its
  writes alone, each with its read-back through the other server), or ``ping``
  (``GET /_load/ping``, answered by the load app's plain ASGI wrapper before FastAPI: what
  uvicorn and locust alone cost on this machine, the ceiling of any server-side design).

Simulated user ``n`` acts as the ``n``-th generated user (its own token, so its writes are its
own) and reads Zipf-distributed targets. Reads go to either server at random. A write goes to
the user's home server, and when it succeeded the same user at once reads the changed resource
through the *other* server: a response that does not show the write is a consistency
violation (counted, and reported as a failure named ``stale read``). A 409 to a write is a
business conflict the workload can cause (applying twice, confirming a payment twice), counted
apart and not as an error.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task

from marketplace.workload import Call, Mix, catalog_from_dict, follow_up, login

SERVERS = os.environ.get("LOAD_SERVERS", "http://127.0.0.1:8101,http://127.0.0.1:8102").split(",")
CATALOG = catalog_from_dict(json.loads(Path(os.environ["LOAD_CATALOG"]).read_text()))
WAIT = tuple(float(x) for x in os.environ.get("LOAD_WAIT", "0.5,1.5").split(","))
MIX = os.environ.get("LOAD_MIX", "mixed")
if MIX not in {"mixed", "reads", "writes", "ping"}:
    raise SystemExit(f"LOAD_MIX must be mixed, reads, writes or ping, not {MIX!r}")
_numbers = itertools.count(0)
_users = CATALOG.users
counters = {"checks": 0, "violations": 0, "conflicts": 0, "writes": 0, "reads": 0}
violations: list[str] = []


@events.quitting.add_listener
def _write_report(**_: Any) -> None:
    report = os.environ.get("LOAD_REPORT")
    if report:
        Path(report).write_text(json.dumps({**counters, "examples": violations[:20]}))


class Marketplace(FastHttpUser):
    host = SERVERS[0]
    wait_time = between(WAIT[0], WAIT[1])

    def on_start(self) -> None:
        number = next(_numbers)
        self.actor = _users[number % len(_users)]
        self.home = SERVERS[number % 2]
        self.other = SERVERS[(number + 1) % 2]
        self.mix = Mix(CATALOG, self.actor, seed=number)
        self.rng = random.Random(number)
        self.token = ""
        if MIX == "ping":
            return
        call = login(self.actor)
        response = self.client.post(f"{self.home}{call.path}", json=call.body, name=call.endpoint)
        self.token = response.json()["access_token"] if response.status_code == 200 else ""

    def _send(self, call: Call, server: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if call.actor is not None else {}
        with self.client.request(
            call.method,
            f"{server}{call.path}",
            name=call.endpoint,
            json=call.body,
            headers=headers,
            catch_response=True,
        ) as response:
            status = response.status_code
            if status == 409 and call.is_write:
                counters["conflicts"] += 1
                response.success()
            elif status >= 400 or status == 0:
                response.failure(f"{status}: {(response.text or '')[:200]}")
            body = None
            if 200 <= status < 300 and response.text:
                body = response.json()
            return status, body

    @task
    def step(self) -> None:
        if MIX == "ping":
            self.client.get(f"{self.rng.choice(SERVERS)}/_load/ping", name="GET /_load/ping")
            return
        call = next(self.mix)
        while (MIX == "reads" and call.is_write) or (MIX == "writes" and not call.is_write):
            call = next(self.mix)
        if not call.is_write:
            counters["reads"] += 1
            self._send(call, self.rng.choice(SERVERS))
            return
        counters["writes"] += 1
        status, body = self._send(call, self.home)
        if not 200 <= status < 300:
            return
        check = follow_up(call, body)
        if check is None:
            return
        counters["checks"] += 1
        read_status, read_body = self._send(check.call, self.other)
        if read_status == 200 and not check.shows(read_body):
            counters["violations"] += 1
            violations.append(f"{check.what}: {check.call.path} on {self.other}")
            events.request.fire(
                request_type="CHECK",
                name="stale read",
                response_time=0,
                response_length=0,
                exception=AssertionError(check.what),
                context={},
            )
