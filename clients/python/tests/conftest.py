"""The real things the tests run against: a private redis-server and gateway
replicas (the switchboard binary, ``SWITCHBOARD_BIN`` or target/debug/) on free
loopback ports, a JWT secret file, tokens minted by ``switchboard token``."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("SWITCHBOARD_BIN") or ROOT / "target/debug/switchboard")

T = TypeVar("T")


def child_env() -> dict[str, str]:
    """This environment without SWITCHBOARD_* (it would configure the binary)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_LOG_LEVEL"] = "warn"
    return env


def free_port() -> int:
    """A port that was free a moment ago (callers retry if it is taken meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.025)


async def wait_until(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """``wait_for`` for async tests: polls ``check`` without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.025)


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@dataclass
class Gateway:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@dataclass
class Env:
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis_port: int = 0

    def __post_init__(self) -> None:
        self.secret_file = self.dir / "jwt.secret"
        self.secret_file.write_text(base64.b64encode(secrets.token_bytes(48)).decode() + "\n")

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}"

    def start_redis(self) -> None:
        for _ in range(4):
            port = free_port()
            proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.procs.append(proc)
            wait_for("redis-server", lambda: proc.poll() is not None or can_connect(port), 10)  # noqa: B023
            if proc.poll() is None:
                self.redis_port = port
                return
        raise RuntimeError("redis-server did not start")

    def start_gateway(self, name: str, extra: tuple[str, ...] = (), port: int | None = None) -> Gateway:
        for _ in range(4):
            listen = port or free_port()
            proc = subprocess.Popen(
                [
                    str(BINARY),
                    "gateway",
                    "--listen",
                    f"127.0.0.1:{listen}",
                    # /metrics on the client port: no second port to collide on.
                    "--admin-listen",
                    f"127.0.0.1:{listen}",
                    "--redis-url",
                    self.redis_url,
                    "--jwt-secret-file",
                    str(self.secret_file),
                    "--replica-id",
                    name,
                    "--stats-interval",
                    "0",
                    "--drain-window",
                    "200ms",
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                env=child_env(),
            )
            self.procs.append(proc)
            gateway = Gateway(name, listen, proc)
            state = wait_for(
                f"gateway {name}",
                lambda: "exited"
                if proc.poll() is not None  # noqa: B023
                else ("ready" if http_status(gateway.url + "/health/ready") == 200 else None),  # noqa: B023
            )
            if state == "ready":
                return gateway
            if port is not None:
                break
        raise RuntimeError(f"gateway {name} did not start")

    def mint(
        self,
        sub: str = "alice",
        perm: tuple[str, ...] = ("websocket:connect", "websocket:subscribe"),
        channels: tuple[str, ...] = ("orders:*", "council:*"),
        ttl: str = "1h",
    ) -> str:
        args = [str(BINARY), "token", "--secret-file", str(self.secret_file), "--sub", sub, "--ttl", ttl]
        if perm:
            args += ["--perm", ",".join(perm)]
        if channels:
            args += ["--channels", ",".join(channels)]
        return subprocess.run(
            args, check=True, capture_output=True, text=True, env=child_env()
        ).stdout.strip()

    def publisher_token(self) -> str:
        return self.mint(sub="producer", perm=("websocket:publish",))

    def redis_cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.redis_port), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build` (or set SWITCHBOARD_BIN)")
    e = Env(tmp_path)
    e.start_redis()
    try:
        yield e
    finally:
        e.stop()


def run(body: Callable[[], Awaitable[T]], timeout: float = 90.0) -> T:
    """Runs an async test body; fails on any exception the loop saw but nobody
    retrieved (a lost task error, a never-awaited failed future)."""
    lost: list[str] = []

    async def main() -> T:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(
            lambda _loop, context: lost.append(
                str(context.get("message")) + " " + repr(context.get("exception"))
            )
        )
        return await asyncio.wait_for(body(), timeout)

    result = asyncio.run(main())
    assert lost == [], f"exceptions nobody retrieved: {lost}"
    return result
