"""Reads an mqrpc server stream with nats-py, following docs/PROTOCOL.md
("Streams") only. Usage: natspy_stream.py URL SUBJECT METHOD N.

Prints one JSON line per data frame ({"seq": n, "body": ...}) and a last
line with the end ({"end": true, "status": ..., "count": ..., "trailer": ...}).
A frame out of order prints {"error": ...} and exits 1."""

import asyncio
import json
import sys
import time
import uuid

import nats

WINDOW = 50


async def main(url, subject, method, n):
    nc = await nats.connect(url)
    stream_id = uuid.uuid4().hex
    inbox = nc.new_inbox()
    reply_subject = nc.new_inbox()
    frames = asyncio.Queue()
    replies = asyncio.Queue()

    async def on_frame(m):
        frames.put_nowait(m)

    async def on_reply(m):
        replies.put_nowait(m)

    await nc.subscribe(inbox, cb=on_frame)
    await nc.subscribe(reply_subject, cb=on_reply)
    headers = {
        "mqrpc-method": method,
        "content-type": "application/json",
        "mqrpc-deadline": str(int((time.time() + 30) * 1000)),
        "mqrpc-stream": stream_id,
        "mqrpc-stream-inbox": inbox,
        "mqrpc-stream-heartbeat": "5000",
        # The window: the server sends at most this many frames ahead of
        # the credit we grant as we read.
        "mqrpc-credit": str(WINDOW),
    }
    await nc.publish(subject, json.dumps({"N": n}).encode(), reply=reply_subject, headers=headers)

    server_inbox = None
    last_seq = 0
    granted = WINDOW
    end = None
    last_ping = time.monotonic()
    while True:
        if server_inbox and time.monotonic() - last_ping > 1.0:
            await nc.publish(server_inbox, b"", headers={"mqrpc-stream": stream_id, "mqrpc-frame": "ping"})
            last_ping = time.monotonic()
        if end is None and not replies.empty():
            end = replies.get_nowait()
        if end is not None and last_seq >= int(end.headers.get("mqrpc-seq", "0")) and frames.empty():
            break
        try:
            m = await asyncio.wait_for(frames.get(), 0.2)
        except asyncio.TimeoutError:
            continue
        h = m.headers or {}
        if h.get("mqrpc-stream") != stream_id:
            continue
        if server_inbox is None and h.get("mqrpc-stream-inbox"):
            server_inbox = h["mqrpc-stream-inbox"]
        if h.get("mqrpc-frame") == "data":
            seq = int(h["mqrpc-seq"])
            if seq != last_seq + 1:
                print(json.dumps({"error": "frame %d after %d" % (seq, last_seq)}))
                sys.exit(1)
            last_seq = seq
            print(json.dumps({"seq": seq, "body": json.loads(m.data)}))
            if granted - last_seq <= WINDOW // 2:
                granted = last_seq + WINDOW
                await nc.publish(server_inbox, b"", headers={
                    "mqrpc-stream": stream_id, "mqrpc-frame": "credit", "mqrpc-credit": str(granted)})
    eh = end.headers or {}
    trailer = {k: v for k, v in eh.items() if k.startswith("x-")}
    print(json.dumps({"end": True, "status": int(eh.get("mqrpc-status", "0")),
                      "count": int(eh.get("mqrpc-seq", "0")), "trailer": trailer}))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
