#!/usr/bin/env python3
"""Reads an mqrpc server stream over RabbitMQ with nothing but pika,
following docs/PROTOCOL.md only (RabbitMQ "Request" and "Reply", and
"Streams": "Reading a server stream without mqrpc (RabbitMQ)").

Usage: pika_stream.py AMQP_URL QUEUE METHOD N [CANCEL_AFTER]

Prints one JSON line per data frame ({"seq": n, "body": ...}) and a last
line with the end ({"end": true, "status": ..., "count": ..., "trailer": ...}).
With CANCEL_AFTER it asks for N messages, cancels the stream after reading
CANCEL_AFTER data frames, and prints the end the server answered. A frame out of order prints {"error": ...}
and exits 1.
"""
import json
import sys
import time
import uuid

import pika

WINDOW = 50  # the server sends at most this many data frames beyond the credit granted
HEARTBEAT_MS = 1000  # both sides' heartbeat interval: we ping every quarter of it


def main():
    url, queue, method, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cancel_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()

    # Our inbox: an exclusive, server-named queue and a token of our choice.
    q = ch.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    token = "t1"
    stream_id = uuid.uuid4().hex
    frames = []
    replies = []
    ch.basic_consume(q, lambda _c, _m, props, body: frames.append((props.headers or {}, body)), auto_ack=True)
    # Direct reply-to for the opening request's reply: the stream's end.
    ch.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, props, body: replies.append(props), auto_ack=True)

    corr = str(uuid.uuid4())
    ch.basic_publish(
        exchange="",
        routing_key=queue,
        mandatory=True,
        properties=pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to",
            correlation_id=corr,
            message_id=str(uuid.uuid4()),
            content_type="application/json",
            type=method,
            headers={
                "mqrpc-deadline": str(int((time.time() + 30) * 1000)),
                "mqrpc-stream": stream_id,
                "mqrpc-stream-inbox": q + "/" + token,
                "mqrpc-stream-heartbeat": str(HEARTBEAT_MS),
                "mqrpc-credit": str(WINDOW),
            },
        ),
        body=json.dumps({"N": n}).encode(),
    )

    def post(server_inbox, frame, **extra):
        # An inbox address is "<queue>/<token>": publish to the queue through
        # the default exchange, with the token in mqrpc-inbox.
        sq, _, stok = server_inbox.partition("/")
        headers = {"mqrpc-inbox": stok, "mqrpc-stream": stream_id, "mqrpc-frame": frame}
        headers.update(extra)
        ch.basic_publish(exchange="", routing_key=sq, properties=pika.BasicProperties(headers=headers), body=b"")

    server_inbox = None
    last_seq = 0
    granted = WINDOW
    end = None
    cancelled = False
    last_ping = time.monotonic()
    give_up = time.monotonic() + 30
    while True:
        if time.monotonic() > give_up:
            raise SystemExit("timeout: %d data frames, end %r" % (last_seq, end))
        if server_inbox and not cancelled and time.monotonic() - last_ping > HEARTBEAT_MS / 4000:
            post(server_inbox, "ping")
            last_ping = time.monotonic()
        if end is None:
            for props in replies:
                if props.correlation_id == corr:
                    end = props
        if end is not None and (cancelled or not frames and last_seq >= int((end.headers or {}).get("mqrpc-seq", "0"))):
            break
        if not frames:
            conn.process_data_events(time_limit=0.05)
            continue
        h, body = frames.pop(0)
        if h.get("mqrpc-stream") != stream_id:
            continue
        if server_inbox is None and h.get("mqrpc-stream-inbox"):
            server_inbox = h["mqrpc-stream-inbox"]
        if h.get("mqrpc-frame") != "data" or cancelled:
            continue
        seq = int(h["mqrpc-seq"])
        if seq != last_seq + 1:
            print(json.dumps({"error": "frame %d after %d" % (seq, last_seq)}))
            sys.exit(1)
        last_seq = seq
        print(json.dumps({"seq": seq, "body": json.loads(body)}), flush=True)
        if cancel_after is not None and last_seq == cancel_after:
            post(server_inbox, "cancel")
            cancelled = True
            continue
        if granted - last_seq <= WINDOW // 2:
            granted = last_seq + WINDOW
            post(server_inbox, "credit", **{"mqrpc-credit": str(granted)})
    eh = end.headers or {}
    trailer = {k: v for k, v in eh.items() if k.startswith("x-")}
    print(json.dumps({"end": True, "status": int(eh.get("mqrpc-status", "0")),
                      "count": int(eh.get("mqrpc-seq", "0")), "trailer": trailer}))
    conn.close()


if __name__ == "__main__":
    main()
