"""moto's AWS server in a process of its own, served by waitress.

    python -m emulators.moto_server [--port 0] [--threads 32]

prints its endpoint (``http://127.0.0.1:PORT``) as its first line of output and serves
until its standard input closes (so it never outlives the process that started it) or
it is terminated. ``MotoServerProcess`` starts one and reads that line.

Why not moto's ``ThreadedMotoServer`` in the caller's process: beside a demo's 200 call
threads it shared their interpreter lock, and a Lambda handler's DynamoDB call waited out
botocore's 60 s read timeout. Why waitress: moto's own server is Werkzeug's development
server, which closes the connection after every response and starts a thread per
request, so each AWS call paid a TCP handshake and a thread, and hundreds of clients
connecting at once overflowed its listen queue of 128 (calls then waited out SYN
retransmits of 1 s and 3 s). waitress serves the same WSGI application with keep-alive
and a fixed pool of threads.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final, IO

#: Sizes the server's connection limit and listen queue: each client thread may hold a
#: connection, and the connector bench runs up to this many contacts.
MAX_CLIENTS: Final = 1000
START_TIMEOUT_S: Final = 60.0
#: waitress's own default is 4, but an SQS long poll holds its thread for the whole
#: wait: the connector workers' receivers (4 each) would hold every thread and the other
#: AWS calls would queue behind them for up to a second.
DEFAULT_THREADS: Final = 32


def _retention_check_reading_one_attribute(backend: object, queue_name: str, message: object) -> bool:
    retention_s = int(backend.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
    return message.sent_timestamp / 1000 + retention_s > time.time()  # type: ignore[attr-defined]


def _speed_up_moto() -> None:
    from moto import backends as moto_backends
    from moto.sqs.models import SQSBackend

    # moto checks each message it returns against the queue's retention period by
    # computing every queue attribute, message counts included: with 300 work items in
    # flight a ReceiveMessage of 10 took 0.14 s, and 300 contacts starting together
    # reached the worker over 6 s. The same check, reading the one attribute.
    SQSBackend.is_message_valid_based_on_retention_period = _retention_check_reading_one_attribute
    # moto lists its package directory (some 180 stat calls) on every request to tell
    # whether the Host header names a service; the directory does not change.
    moto_modules = tuple(moto_backends.list_of_moto_modules())
    moto_backends.list_of_moto_modules = lambda: moto_modules


def serve(port: int, threads: int, announce: IO[str]) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from waitress.server import create_server

    _speed_up_moto()
    # waitress warns of every queued request; under load that is the normal state.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = create_server(
        DomainDispatcherApplication(create_backend_app),
        host="127.0.0.1",
        port=port,
        threads=threads,
        connection_limit=4 * MAX_CLIENTS,
        backlog=4 * MAX_CLIENTS,
        asyncore_use_poll=True,
    )
    print(f"http://127.0.0.1:{server.effective_port}", file=announce, flush=True)
    server.run()


def _exit_when_parent_goes() -> None:
    sys.stdin.read()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.moto_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one (default)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"request threads (default {DEFAULT_THREADS})")
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_when_parent_goes, name="parent-watch", daemon=True).start()
    serve(args.port, args.threads, sys.stdout)


class MotoServerProcess:
    """``python -m emulators.moto_server`` as a child process; ``endpoint_url`` once started."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self._threads = threads
        self._process: subprocess.Popen[str] | None = None
        self.endpoint_url = ""

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> "MotoServerProcess":
        self._process = subprocess.Popen(
            [sys.executable, "-m", "emulators.moto_server", "--threads", str(self._threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        announced: list[str] = []
        reader = threading.Thread(target=lambda: announced.append(self._process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        line = announced[0].strip() if announced else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"moto's server did not start within {START_TIMEOUT_S:.0f} s (its output: {line!r})")
        self.endpoint_url = line
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    main()
