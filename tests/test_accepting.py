"""Workers sharing one listening socket, as BentoML runs them: connections a client opens at once
reach every worker, not only the first to wake. (Without ``accept_one_connection_per_turn`` the
first worker took all 16 in 4 of 5 runs of ``connections_per_worker("asyncio-default")``.)"""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess
import sys
from asyncio import selector_events
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 16

WORKER = """
import asyncio, os, socket, sys, time
from serving.workarounds.accepting import accept_one_connection_per_turn
if sys.argv[2] == "one-per-turn":
    accept_one_connection_per_turn()
listening = socket.socket(fileno=int(sys.argv[1]))

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(str(os.getpid()).encode())
        transport.close()
        time.sleep(0.02)  # busy with the request it took, as a serving worker is

async def main():
    server = await asyncio.get_running_loop().create_server(
        Answer, sock=listening, backlog=64, start_serving=False)
    print("ready", flush=True)
    sys.stdin.readline()  # every worker starts accepting at once
    await server.start_serving()
    await asyncio.sleep(30)

asyncio.run(main())
"""


def connections_per_worker(mode: str, workers: int = 2) -> list[int]:
    """Open CONNECTIONS connections to ``workers`` processes on one shared socket, all queued
    before the workers start accepting; how many each worker took, most first."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(listening.fileno()), mode],
                                  pass_fds=[listening.fileno()], cwd=ROOT, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for _ in range(workers)]
        try:
            for proc in procs:
                assert proc.stdout.readline().strip() == "ready"
            clients = [socket.create_connection(listening.getsockname(), timeout=10)
                       for _ in range(CONNECTIONS)]
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            answered_by = collections.Counter()
            for client in clients:
                with client:
                    answered_by[client.recv(32)] += 1
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    return sorted(answered_by.values(), reverse=True) + [0] * (workers - len(answered_by))


def test_a_clients_connections_spread_over_the_workers() -> None:
    taken = connections_per_worker("one-per-turn")

    assert sum(taken) == CONNECTIONS
    assert min(taken) >= CONNECTIONS // 4, f"connections per worker: {taken}"


def test_the_service_applies_it_when_a_worker_starts_it_not_when_it_is_imported() -> None:
    probe = ("import serving.service as s; from serving.workarounds.accepting import accepting_one_per_turn "
             "as on; from bentoml._internal.server.http import traffic; import serving.workarounds.timeouts "
             "as t; before = (on(), traffic.TimeoutMiddleware.__call__ is t._timed); "
             "s.apply_framework_workarounds(); "
             "print(before, (on(), traffic.TimeoutMiddleware.__call__ is t._timed))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.split("\n")[-2] == "(False, False) (True, True)"


def test_a_worker_applies_them_as_it_starts_the_service(serving_dir) -> None:
    import os

    probe = ("import serving.service as s; from serving.workarounds.accepting import accepting_one_per_turn "
             "as on; before = on(); s.NextBest(); print(before, on())")
    environment = {**os.environ, "NEXTBEST_DATA_DIR": str(serving_dir),
                   "NEXTBEST_RELOAD_INTERVAL_SECONDS": "0", "NEXTBEST_FLUSH_INTERVAL_SECONDS": "0"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1], env=environment)
    assert result.stdout.split("\n")[-2] == "False True"


def test_a_worker_says_when_its_loop_takes_every_connection_at_once(monkeypatch, caplog) -> None:
    from serving.workarounds import accepting

    async def start_worker(workers: int) -> None:
        accepting.warn_unless_spread(workers)

    accepting.accept_one_connection_per_turn()
    asyncio.run(start_worker(2))
    assert not caplog.records
    monkeypatch.setattr(selector_events.BaseSelectorEventLoop, "_accept_connection",
                        accepting._ORIGINAL)  # as on a loop that drains the queue (uvloop)
    asyncio.run(start_worker(2))
    asyncio.run(start_worker(1))  # one worker: nothing to spread
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("NEXTBEST_WORKERS=2 on _UnixSelectorEventLoop")
