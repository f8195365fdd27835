"""The Celery application: strict-priority queues per pool, at-least-once delivery, task events on.

The API process imports this module only to send tasks by name; no model is loaded here.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from inferno_jobs.config import Settings
from inferno_jobs.job import Job
from inferno_jobs.queue import WEBHOOK_QUEUE, all_queues, queue_name
from workers.message import Commands, MessageCollector

RUN_JOB = "inferno.run_job"
VALIDATE_MODEL = "inferno.validate_model"
BROKER_SOCKET_TIMEOUT_S = 10  # kombu's Redis sockets (broker_transport_options below)


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (default: the environment)."""
    settings = settings or Settings.from_env()
    app = Celery("inferno", broker=settings.redis_url,
                 include=["workers.tasks", "workers.delivery", "workers.model_tasks", "workers.chunk"])
    transport = {
        # Ask for a pool's queues in the order given with -Q (high, normal, low), not round robin.
        "queue_order_strategy": "priority",
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu 5.7: restore messages of a dead worker promptly instead of every tenth sweep.
        "unacked_restore_interval": 10,
        # Without these kombu's sockets have no timeout: a frozen Redis held every API thread that was
        # publishing a message (kombu's connection check) for as long as it stayed frozen. The worker's own
        # BRPOP waits 1 s at a time (polling_interval), well under them.
        "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_S,
    }
    app.conf.update(
        # Each queue its own direct exchange and routing key: a shared default key would copy every
        # message into all three priority lists.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in all_queues() + [WEBHOOK_QUEUE]],
        task_default_queue="inferno.cpu.normal",
        task_ignore_result=True,  # the job store holds results
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # prefetched low jobs would run before a later high one
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,
        # A "sent" event is a second publish per job (about a third of POST /jobs); Flower sees every task
        # from the workers' received/started/succeeded events anyway. INFERNO_TASK_SENT_EVENTS=true turns it on.
        task_send_sent_event=settings.task_sent_events,
        worker_proc_alive_timeout=60,  # model loads in worker_process_init can take a while
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        visibility_timeout=settings.visibility_timeout_s,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    app.inferno_settings = settings
    # A new job's message goes into the transaction that stores the job (workers/message.py).
    app.message_commands = MessageCollector(app).commands
    return app


def run_job_options(job: Job) -> dict:
    """``send_task`` options of ``job``'s run: its pool's queue at its priority, by task name (the sender loads
    no model).

    The soft time limit ends a run at ``timeout_s`` (the job becomes ``timed_out``); the hard limit, a little
    later, kills a run stuck in native code, and the reconciler then marks the job.
    """
    # The keyword arguments only label the task (Flower's task page, logs); the job record is the truth.
    args, kwargs = [job.id], {"model": job.model, "tenant": job.tenant, "priority": job.priority.value}
    # Short strings: their plain repr is what Celery's size-bounded saferepr would give, at a fraction of its cost.
    # declare=[]: the message goes to its queue by name (Celery's anonymous direct exchange), so declaring the
    # queue's binding again on every send (Celery's default) changes nothing; workers declare their queues.
    return dict(args=args, kwargs=kwargs, argsrepr=repr(args), kwargsrepr=repr(kwargs),
                queue=queue_name(job.pool, job.priority), declare=[],
                soft_time_limit=job.timeout_s, time_limit=job.timeout_s + HARD_LIMIT_GRACE_S,
                headers={"request_id": job.request_id, "job_id": job.id, "model": job.model})


def enqueue(celery: Celery, job: Job) -> None:
    """Send ``job``'s run now (a job already stored: a resend, a retry, a follower let go). A new job's message
    is stored with it instead: :func:`run_job_commands`."""
    celery.send_task(RUN_JOB, **run_job_options(job))


def run_job_commands(celery: Celery, job: Job) -> Commands:
    """The Redis commands of ``job``'s run message, for ``JobStore.create(publish=...)`` to store with the job."""
    return celery.message_commands(RUN_JOB, **run_job_options(job))


HARD_LIMIT_GRACE_S = 15

RUN_BATCH_CHUNK = "inferno.run_batch_chunk"


def enqueue_chunk(celery: Celery, batch, index: int, timeout_s: int) -> None:
    """Send chunk ``index`` of ``batch`` (one engine call) to its model's pool queue at the batch's priority."""
    celery.send_task(RUN_BATCH_CHUNK, args=[batch.id, index], queue=queue_name(batch.pool, batch.priority),
                     soft_time_limit=timeout_s, time_limit=timeout_s + HARD_LIMIT_GRACE_S,
                     headers={"request_id": batch.request_id, "batch_id": batch.id, "model": batch.model})


app = make_celery()
