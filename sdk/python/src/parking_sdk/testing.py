"""``LocalCluster``: the whole parking-mesh system on free ports, for tests in Python.

It runs the repository's ``local-cluster`` binary (four services and the gateway, a fresh
event namespace and fresh SQLite files), waits for the one JSON line it prints when ready,
exposes that line's fields, and stops it by closing its standard input (it then cleans up
its files and event streams). Use it as a context manager, sync or async::

    with LocalCluster() as cluster:
        tokens = cluster.tokens("3117")
    async with LocalCluster(env={"COMMUNITY_PORT": "50155"}) as cluster:
        ...

The binary is ``$LOCAL_CLUSTER`` when set, else ``target/debug/local-cluster`` in the first
directory above the current one (or above this package) that has it; ``make test`` builds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from parking_sdk.channels import AsyncGateway, Gateway, aio_connect, connect
from parking_sdk.tokens import TokenSource

BINARY_ENV = "LOCAL_CLUSTER"


class LocalClusterError(RuntimeError):
    """local-cluster could not be found, or exited before it was ready."""


@dataclass(frozen=True)
class User:
    """A login local-cluster created: ``name`` is the username (an employee's member id)."""

    name: str
    role: str
    password: str


def find_binary() -> Path:
    """The local-cluster binary: ``$LOCAL_CLUSTER``, else ``<repo>/target/debug/local-cluster``
    found by walking up from the current directory, then from this package."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        return Path(explicit)
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidate = folder / "target" / "debug" / "local-cluster"
            if candidate.is_file():
                return candidate
    raise LocalClusterError(
        f"local-cluster not found: set {BINARY_ENV} or build it (cargo build --workspace --bins)"
    )


class LocalCluster:
    """Starts local-cluster on enter and stops it on exit (``with`` or ``async with``).

    ``env`` is added to the process's environment (e.g. ``COMMUNITY_PORT``, ``RUST_LOG``);
    ``binary`` overrides :func:`find_binary`; ``ready_timeout`` bounds the start (seconds);
    ``stderr`` receives the services' logs (by default a temporary file whose end is quoted
    when the cluster fails to start).
    After entering, ``info`` is the ready line as parsed JSON and the properties below read it.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        ready_timeout: float = 60.0,
        stderr: IO[bytes] | int | None = None,
    ) -> None:
        self.binary = Path(binary) if binary is not None else None
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.stderr = stderr
        # The logs when no stderr was given: kept for the error message if the start fails.
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._info: dict[str, Any] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        binary = self.binary or find_binary()
        stderr = self.stderr
        if stderr is None:
            # Closed by stop(), which every failed start calls too.
            self._log = stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [str(binary)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **self.env},
            )
        except OSError as failed:
            self.stop()
            raise LocalClusterError(f"cannot run local-cluster {binary}: {failed}") from failed
        line = self._ready_line(self._process)
        try:
            self._info = json.loads(line)
        except ValueError as bad:
            self.stop()
            raise LocalClusterError(f"local-cluster printed {line[:200]!r}, not its JSON line") from bad
        return self

    def _ready_line(self, process: subprocess.Popen[bytes]) -> str:
        assert process.stdout is not None
        stdout = process.stdout
        lines: list[bytes] = []
        # readline has no timeout: read in a thread and wait for it with one.
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.ready_timeout)
        if not lines or not lines[0].strip():
            code = process.poll()
            logs = self._log_tail()
            self.stop()
            if code is None:
                raise LocalClusterError(f"local-cluster not ready after {self.ready_timeout} s{logs}")
            raise LocalClusterError(f"local-cluster exited with {code} before it was ready{logs}")
        # Whatever it prints later is read and dropped, so a full pipe never blocks it.
        threading.Thread(target=stdout.read, daemon=True).start()
        return lines[0].decode()

    def _log_tail(self, size: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - size))
        return "; its last logs:\n" + self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        """Closes local-cluster's stdin (its signal to clean up and exit) and waits for it."""
        process, self._process = self._process, None
        if process is None:
            self._close_log()
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalCluster:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # --- the ready line --------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """The ready line, parsed (every field local-cluster reports)."""
        if self._info is None:
            raise LocalClusterError("local-cluster is not started")
        return self._info

    @property
    def gateway(self) -> str:
        """The gateway's ``host:port`` (gRPC, gRPC-Web and REST)."""
        return str(self.info["gateway"])

    @property
    def gateway_url(self) -> str:
        return str(self.info["gateway_url"])

    @property
    def token_url(self) -> str:
        return str(self.info["token_url"])

    @property
    def jwks_url(self) -> str:
        return str(self.info["jwks_url"])

    @property
    def issuer(self) -> str:
        return str(self.info["issuer"])

    @property
    def audience(self) -> str:
        return str(self.info["audience"])

    @property
    def namespace(self) -> str:
        """This run's event namespace (subjects ``<namespace>.<context>.<EventName>``)."""
        return str(self.info["namespace"])

    @property
    def nats_url(self) -> str:
        return str(self.info["nats_url"])

    @property
    def community_port(self) -> int:
        """The port the gateway sends CommunityParkingService calls to."""
        return int(self.info["community_port"])

    @property
    def max_parking(self) -> int:
        """The daily capacity when none was set for a date."""
        return int(self.info["max_parking"])

    @property
    def folder(self) -> Path:
        return Path(self.info["folder"])

    @property
    def users(self) -> dict[str, User]:
        return {
            name: User(name=name, role=str(user["role"]), password=str(user["password"]))
            for name, user in self.info["users"].items()
        }

    # --- conveniences ----------------------------------------------------------------------

    def tokens(self, user: str, **options: Any) -> TokenSource:
        """A password-grant TokenSource for one of the cluster's users."""
        return TokenSource.password(self.token_url, user, self.users[user].password, **options)

    def connect(self, user: str | None = None) -> Gateway:
        """Blocking clients to the gateway, as ``user`` (or with no token)."""
        return connect(self.gateway, self.tokens(user) if user else None)

    def aio_connect(self, user: str | None = None) -> AsyncGateway:
        """Asyncio clients to the gateway, as ``user`` (or with no token)."""
        return aio_connect(self.gateway, self.tokens(user) if user else None)
