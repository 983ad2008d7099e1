"""Serving the emulator: in a background thread (`EmulatorServer`: tests, the demo) or blocking (`serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from aiohttp import web

from batchrun.emulator.app import Emulator
from batchrun.emulator.config import DEFAULT_CONFIG, EmulatorConfig

__all__ = ["EmulatorServer", "serve"]


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


async def _start_site(emulator: Emulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start listening; return the runner and the port actually bound (port 0 picks a free one)."""
    # No access log: a log line per request would cost more than answering it. A short shutdown timeout
    # so stopping does not wait a minute for requests still sleeping out their latency.
    runner = web.AppRunner(emulator.app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


class EmulatorServer:
    """Runs an Emulator in a background daemon thread with its own asyncio loop.

    It listens on 127.0.0.1 by default, on a free port (port 0); use it as a context manager in tests.
    """

    def __init__(
        self, config: EmulatorConfig = DEFAULT_CONFIG, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Prepare the server; `start` (or `with`) makes it listen."""
        self.emulator = Emulator(config)
        self._host = host
        self._port = port
        self._base_url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:43121/v1`; valid once `start` has returned."""
        if self._base_url is None:
            raise RuntimeError("EmulatorServer.base_url is only known after start()")
        return self._base_url

    @property
    def root_url(self) -> str:
        """The server's root, e.g. `http://127.0.0.1:43121`: the Anthropic base URL (+ `/v1/messages`)."""
        return self.base_url.removesuffix("/v1")

    def start(self, timeout: float = 10.0) -> str:
        """Start serving in a daemon thread, wait until it listens, and return the base URL."""
        if self._thread is not None:
            # The aiohttp app is frozen once served, so a stopped (or failed) server stays stopped.
            if self._stopped or self._base_url is None:
                raise RuntimeError("an EmulatorServer cannot be restarted; create a new one")
            return self._base_url
        self._thread = threading.Thread(target=self._run, name="batchrun-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the emulator did not start listening within {timeout} s")
        if self._startup_error is not None:
            self._thread.join(timeout)
            raise self._startup_error
        return self.base_url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                self._runner, port = loop.run_until_complete(
                    _start_site(self.emulator, self._host, self._port)
                )
            except BaseException as exc:  # handed to start(), which raises it in the caller's thread
                self._startup_error = exc
                return
            self._base_url = _base_url(self._host, port)
            self._ready.set()
            loop.run_forever()
            # Whatever the runner's cleanup left (e.g. a handler still sleeping) is cancelled here, so
            # closing the loop does not warn about pending tasks.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:  # gather() of nothing would look for a current loop, and this thread has none
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            self._ready.set()  # never leave start() waiting, whatever happened
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, close open connections and join the thread; calling it again does nothing."""
        loop, runner, thread = self._loop, self._runner, self._thread
        self._runner = None
        if runner is None or loop is None or thread is None:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> EmulatorServer:
        """Start the server; the value is the server itself (its URL is `base_url`)."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Blocking: serve until Ctrl+C (for `batchrun emulate`), printing one line with the base URL."""
    emulator = Emulator(config)

    async def main() -> None:
        runner, bound = await _start_site(emulator, host, port)
        try:
            url = _base_url(host, bound)
            root = url.removesuffix("/v1")
            print(f"batchrun emulator serving at {url} (kind anthropic: {root}) (Ctrl+C to stop)", flush=True)
            await asyncio.Event().wait()  # forever; Ctrl+C cancels this task
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how this command ends, not an error
        asyncio.run(main())
