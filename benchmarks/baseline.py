"""The baseline: a bare aiohttp loop sending the same requests batchrun would, with nothing else around it.

Reads the prompt set (JSONL with a `text` column), builds each chat-completions body once up front (so the
loop measures the network path, not rendering), then keeps `--concurrency` requests in flight until every row
is answered, parsing each reply as JSON. Prints one JSON line: rows, ok, wall_s (sending only).

    python benchmarks/baseline.py --url http://127.0.0.1:PORT/v1 --input prompts.jsonl --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def send_all(url: str, bodies: list[bytes], concurrency: int) -> int:
    """Send every body with `concurrency` workers; return how many came back 200 with a JSON body."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    ok = 0
    queue = iter(bodies)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal ok
            headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
            for body in queue:
                async with session.post(url, data=body, headers=headers) as response:
                    payload = json.loads(await response.read())
                    ok += response.status == 200 and "choices" in payload

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def main() -> None:
    """Parse the flags, build the bodies, send them, print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="base URL ending in /v1")
    parser.add_argument("--input", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", default="qwen3-max")
    args = parser.parse_args()
    with open(args.input, encoding="utf-8") as lines:
        bodies = [
            json.dumps(
                {"model": args.model, "messages": [{"role": "user", "content": json.loads(line)["text"]}]}
            ).encode()
            for line in lines
        ]
    started = time.perf_counter()
    ok = asyncio.run(send_all(args.url.rstrip("/") + "/chat/completions", bodies, args.concurrency))
    print(json.dumps({"rows": len(bodies), "ok": ok, "wall_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
