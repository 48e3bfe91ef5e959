"""A real WebSocket peer for tests/gateway/websocket.rs (PyPI `websockets`).

    ws_peer.py server            -> prints the port; each connection first gets a JSON
                                    message naming the headers it arrived with, then
                                    every message is echoed
    ws_peer.py call URL [AUTHORIZATION] [--wait-close]
                                 -> prints JSON: the handshake status, the first message,
                                    the echo of "ping", and (with --wait-close) whether
                                    the connection was closed by the other side
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def server():
    async def handler(ws):
        h = ws.request.headers
        await ws.send(json.dumps({"user": h.get("X-Portcullis-User"),
                                  "authorization": h.get("Authorization"),
                                  "path": ws.request.path}))
        async for message in ws:
            await ws.send(message)

    async with serve(handler, "127.0.0.1", 0) as s:
        port = next(iter(s.sockets)).getsockname()[1]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def call(url, authorization, wait_close):
    headers = {"Authorization": authorization} if authorization else None
    out = {}
    try:
        async with connect(url, additional_headers=headers, open_timeout=30, ping_interval=None) as ws:
            out["status"] = 101
            out["first"] = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await ws.send("ping")
            out["echo"] = await asyncio.wait_for(ws.recv(), 30)
            if wait_close:
                try:
                    await asyncio.wait_for(ws.recv(), 60)
                    out["closed"] = False
                except ConnectionClosed:
                    out["closed"] = True
    except InvalidStatus as e:
        out["status"] = e.response.status_code
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        args = [a for a in sys.argv[2:] if a != "--wait-close"]
        asyncio.run(call(args[0], args[1] if len(args) > 1 else None, "--wait-close" in sys.argv))
