"""The baselines: a bare loop sending the same requests batchrun would, with nothing else around it.

Reads the prompt set (JSONL with a `text` column), builds each chat-completions body once up front (so the
loop measures the network path, not rendering), then keeps `--concurrency` requests in flight until every row
is answered, parsing each reply as JSON. Prints one JSON line: rows, ok, wall_s (sending only).

`--client aiohttp` (the issue's baseline) sends with an aiohttp session; `--client http1` with batchrun's
own lean HTTP/1.1 client (`batchrun.net.http1`), so batchrun's overhead over its own network path shows too.
Both run on the event loop batchrun runs on (uvloop where it is installed).

    python benchmarks/baseline.py --url http://127.0.0.1:PORT/v1 --input prompts.jsonl --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]


async def send_all(post: Post, bodies: list[bytes], concurrency: int) -> int:
    """Send every body with `concurrency` workers; return how many came back 200 with a JSON body."""
    ok = 0
    queue = iter(bodies)

    async def worker() -> None:
        nonlocal ok
        for body in queue:
            status, content = await post(body)
            ok += status == 200 and "choices" in json.loads(content)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def with_aiohttp(url: str, bodies: list[bytes], concurrency: int) -> int:
    """The bare aiohttp loop."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes) -> tuple[int, bytes]:
            async with session.post(url, data=body, headers=HEADERS) as response:
                return response.status, await response.read()

        return await send_all(post, bodies, concurrency)


async def with_http1(url: str, bodies: list[bytes], concurrency: int) -> int:
    """The bare loop over batchrun's lean HTTP/1.1 client."""
    from batchrun.net import http1

    pool = http1.Pool()
    route = http1.route(url, HEADERS)

    async def post(body: bytes) -> tuple[int, bytes]:
        status, _, content = await pool.post(route, body, connect_s=10, total_s=120)
        return status, content

    try:
        return await send_all(post, bodies, concurrency)
    finally:
        pool.close()


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, as batchrun does."""
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main() -> None:
    """Parse the flags, build the bodies, send them, print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="base URL ending in /v1")
    parser.add_argument("--input", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", default="qwen3-max")
    parser.add_argument("--client", choices=["aiohttp", "http1"], default="aiohttp")
    args = parser.parse_args()
    with open(args.input, encoding="utf-8") as lines:
        bodies = [
            json.dumps(
                {"model": args.model, "messages": [{"role": "user", "content": json.loads(line)["text"]}]}
            ).encode()
            for line in lines
        ]
    url = args.url.rstrip("/") + "/chat/completions"
    send = with_aiohttp if args.client == "aiohttp" else with_http1
    started = time.perf_counter()
    ok = run(send(url, bodies, args.concurrency))
    print(json.dumps({"rows": len(bodies), "ok": ok, "wall_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
