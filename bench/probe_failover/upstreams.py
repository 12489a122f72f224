"""Two fake SSE providers on loopback. A (priority 0) misbehaves per `x-scenario`; B serves
(or misbehaves per `x-scenario-b`).

GET /_hits on either port lists the hits both have seen (port, scenario, time).
"""

import asyncio
import json
import sys
import time

from aiohttp import web

HITS: list[dict] = []
OPEN = b'event: message_start\ndata: {"type":"message_start"}\n\n'
ROLE = b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'


def content(text: str, who: str) -> bytes:
    return f'data: {{"choices":[{{"delta":{{"content":"{text}"}}}}],"from":"{who}"}}\n\n'.encode()


async def sse_start(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    return resp


def handler(port_name: str):
    async def handle(request: web.Request) -> web.StreamResponse:
        scenario = (
            request.headers.get("x-scenario", "healthy")
            if port_name == "A"
            else request.headers.get("x-scenario-b", "healthy")
        )
        await request.read()
        HITS.append({"upstream": port_name, "scenario": scenario, "t": time.time()})
        resp = await sse_start(request)
        if scenario == "error":  # (a) 200 then an error event first
            await resp.write(
                b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
            )
            await resp.write_eof()
            return resp
        if scenario == "stall":  # (b) opening frames then nothing
            await resp.write(OPEN)
            await resp.write(ROLE)
            await asyncio.sleep(30)
            return resp
        if scenario == "reset":  # (c) opening frames then a TCP reset
            await resp.write(OPEN)
            await resp.write(ROLE)
            await asyncio.sleep(0.05)
            tr = request.transport
            sock = tr.get_extra_info("socket")
            import socket
            import struct

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tr.abort()
            raise asyncio.CancelledError()
        if scenario == "late_fail":  # (d') two content tokens, then reset
            await resp.write(ROLE)
            await resp.write(content("one", port_name))
            await resp.write(content("two", port_name))
            await asyncio.sleep(0.05)
            request.transport.abort()
            raise asyncio.CancelledError()
        # healthy: opening frames, a pause (the "model thinking"), then content
        delay = float(request.headers.get("x-first-token-delay", "0.3"))
        await resp.write(OPEN)
        await resp.write(ROLE)
        await asyncio.sleep(delay)
        for word in ("hello", "from", port_name):
            await resp.write(content(word, port_name))
            await asyncio.sleep(0.02)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return handle


async def hits(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        HITS.clear()
    return web.Response(text=json.dumps(HITS), content_type="application/json")


async def main(port_a: int, port_b: int) -> None:
    for name, port in (("A", port_a), ("B", port_b)):
        app = web.Application()
        app.router.add_route("*", "/_hits", hits)
        app.router.add_route("*", "/{tail:.*}", handler(name))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    print("upstreams ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
