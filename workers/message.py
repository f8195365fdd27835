"""A job's Celery message as Redis commands, for the transaction that stores the job.

``celery.send_task`` builds the message (routing, headers, the ``before_task_publish`` signal that tracing hooks
into) and kombu wraps it for Redis, as for any task; only the last step differs: instead of a separate round trip
(a Redis client built per publish, then ``LPUSH``), kombu's publish-batch hook hands the final commands to us, and
``JobStore.create`` runs them in the ``MULTI`` that writes the job. A job and its message are then stored together
or not at all: no job is ever kept without the message that runs it, and a POST costs one round trip less.
"""

from __future__ import annotations

import threading

from celery import Celery

Commands = list[tuple[str, tuple]]


class _Collector:
    """kombu's publish-batch session (what ``Channel.create_publish_batch`` returns), keeping the Redis commands
    of what is published through it instead of running them."""

    def __init__(self, channel, target, commands: Commands):
        self.channel = channel  # the producer's (kombu checks that every publish of a batch comes from it)
        self.target = target  # the real channel
        self.commands = commands

    def publish(self, message, **kwargs):
        # The channel's own routing and envelope; its Redis _put calls add() with the final commands.
        return self.target.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args) -> None:
        self.commands.append((name, args))

    def flush(self) -> None:
        """Nothing to run: the caller runs the commands in its own transaction."""

    def discard(self) -> None:
        self.commands.clear()

    def close(self) -> None:
        """Nothing is held."""


class _CollectingChannel:
    """A kombu channel whose publish batches collect commands; everything else is the real channel's."""

    def __init__(self, channel):
        self._channel = channel
        self.commands: Commands = []

    def __getattr__(self, name):
        return getattr(self._channel, name)

    def create_publish_batch(self, max_size: int) -> _Collector:
        return _Collector(self, self._channel, self.commands)


class MessageCollector:
    """Collects the Redis commands of ``send_task`` calls, one producer per thread (kombu channels are not
    thread-safe; the API serves requests on threads)."""

    def __init__(self, celery: Celery):
        self.celery = celery
        self._local = threading.local()
        self._queues: dict[str, object] = {}

    def _producer(self):
        producer = getattr(self._local, "producer", None)
        if producer is None:
            connection = self.celery.connection_for_write()
            producer = self._local.producer = self.celery.amqp.Producer(
                _CollectingChannel(connection.default_channel), auto_declare=False)
        return producer

    def commands(self, name: str, **options) -> Commands:
        """The Redis commands that would publish ``send_task(name, **options)``; nothing is sent."""
        producer = self._producer()
        if not producer.supports_batch_publish:  # it would be sent at once (kombu before 5.7, another transport)
            raise RuntimeError("the broker transport cannot defer a publish (kombu 5.7+ on Redis can)")
        queue = options.get("queue")
        if isinstance(queue, str):
            # The Queue itself, as Celery allows: given its name, Celery's router and publisher each look it up
            # through the aliases first, which costs a KeyError raised and caught twice per send.
            if queue not in self._queues:
                self._queues[queue] = self.celery.amqp.queues[queue]
            options["queue"] = self._queues[queue]
        channel = producer.channel  # the _CollectingChannel
        channel.commands = []
        with producer.batch():
            # retry=False: nothing here touches the network, so kombu's retrying wrapper would only cost time.
            self.celery.send_task(name, producer=producer, retry=False, **options)
        commands, channel.commands = channel.commands, []
        return commands
