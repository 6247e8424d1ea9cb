#!/usr/bin/env python3
"""Calls an mqrpc service over RabbitMQ with nothing but pika.

Usage: pika_client.py AMQP_URL QUEUE

It follows docs/PROTOCOL.md (RabbitMQ section): the request goes to the
default exchange with the service's queue as routing key, reply_to is
amq.rabbitmq.reply-to (direct reply-to), correlation_id matches the reply,
the method travels in the type property (the second call names it in the
mqrpc-method header instead, as the protocol had it until 2026-11-21), the
codec in content_type and the caller's deadline in mqrpc-deadline (Unix ms)
and expiration (ms left).
Each reply is printed as one JSON line: {"status", "message", "body"}.
"""
import json
import sys
import time
import uuid

import pika


def main():
    url, queue = sys.argv[1], sys.argv[2]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    replies = {}

    def on_reply(_ch, _method, props, body):
        replies[props.correlation_id] = (props, body)

    # Direct reply-to: consume the pseudo-queue (no-ack) before publishing.
    ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)

    def call(method, payload, timeout=10.0, method_header=False):
        corr = str(uuid.uuid4())
        deadline_ms = int((time.time() + timeout) * 1000)
        headers = {"mqrpc-deadline": str(deadline_ms)}
        if method_header:
            headers["mqrpc-method"] = method
        ch.basic_publish(
            exchange="",
            routing_key=queue,
            mandatory=True,
            properties=pika.BasicProperties(
                reply_to="amq.rabbitmq.reply-to",
                correlation_id=corr,
                message_id=str(uuid.uuid4()),
                content_type="application/json",
                expiration=str(int(timeout * 1000)),
                type=None if method_header else method,
                headers=headers,
            ),
            body=json.dumps(payload).encode(),
        )
        end = time.time() + timeout
        while corr not in replies:
            if time.time() > end:
                raise SystemExit("timeout waiting for reply to " + method)
            conn.process_data_events(time_limit=0.1)
        props, body = replies.pop(corr)
        headers = props.headers or {}
        status = int(headers.get("mqrpc-status", "0") or 0)
        return {
            "status": status,
            "message": headers.get("mqrpc-message", ""),
            "content_type": props.content_type or "",
            "body": json.loads(body) if body else None,
        }

    print(json.dumps(call("Add", {"a": 2, "b": 40})), flush=True)
    print(json.dumps(call("Add", {"a": -5, "b": 5}, method_header=True)), flush=True)
    print(json.dumps(call("Nope", {})), flush=True)
    conn.close()


if __name__ == "__main__":
    main()
