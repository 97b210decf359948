"""JetStream pull batches without a task per message.

nats-py 2.16's ``PullSubscription.fetch(n)`` hands over each message through
``Subscription.next_msg``, which makes a UUID, a task and an ``asyncio.wait_for`` (a second
task) per message, and runs the event loop once or more between them: at 2,000 messages a
batch, the consumer spent more time in that machinery than in validating and storing the events
(docs/benchmarks.md, events from NATS JetStream).

:class:`BatchPuller` sends the same pull request (``$JS.API.CONSUMER.MSG.NEXT``, the JetStream
API that ``fetch`` uses) to a subscription of its own, whose callback only appends each message
to a list. The messages are nats-py's own, so ``ack`` works as usual.

It can go when nats-py's ``fetch`` no longer creates a task per message (look for
``create_task`` in ``Subscription.next_msg``, ``nats/aio/subscription.py``) and
``bench/bench_stream.py`` keeps its rate with ``subscription.fetch`` in place of ``pull``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from nats.aio.msg import Msg

STATUS = "Status"
"""The header of a JetStream status message: 404 no messages, 408 the request expired, 409 the
consumer's limits, 100 a heartbeat."""


class BatchPuller:
    """Pull requests on one durable consumer, one batch at a time."""

    def __init__(self, client, stream: str, durable: str) -> None:
        self.client = client
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"

    async def pull(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages: as many as arrive before the batch is full or ``timeout``
        seconds have passed (the request's expiry; the server then says so)."""
        messages: list[Msg] = []
        done = asyncio.Event()

        async def receive(message: Msg) -> None:
            status = message.headers.get(STATUS) if message.headers else None
            if status is None:
                messages.append(message)
                if len(messages) >= batch:
                    done.set()
            elif status != "100":  # anything but a heartbeat ends the request
                done.set()

        inbox = self.client.new_inbox()
        subscription = await self.client.subscribe(inbox, cb=receive)
        try:
            request = {"batch": batch, "expires": int(timeout * 1e9)}
            await self.client.publish(self.subject, json.dumps(request).encode(), reply=inbox)
            with contextlib.suppress(TimeoutError):  # the server's expiry normally comes first
                await asyncio.wait_for(done.wait(), timeout + 1.0)
        finally:
            await subscription.unsubscribe()
        return messages
