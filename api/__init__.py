"""The Flask API: ``create_app(settings=None)`` builds it; blueprints by resource."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from flask import Flask

from api.body import Request as BoundedRequest
from api.json_provider import JSONProvider
from inferno_jobs.apikey import KeyRing
from inferno_jobs.config import Settings
from inferno_jobs.model import ModelRepository
from inferno_jobs.store import JobStore


@dataclass
class Services:
    """What the request handlers use, built once per app."""

    settings: Settings
    redis: redis.Redis
    store: JobStore
    keyring: KeyRing
    models: ModelRepository
    celery: object
    started_at: float


def create_app(settings: Settings | None = None, *, redis_client: redis.Redis | None = None,
               celery=None) -> Flask:
    """The API app. Tests pass fakeredis and a recording Celery stand-in; production passes nothing."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.request_class = BoundedRequest  # a chunked body over the limit is a 413 too, not a truncated body
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json = JSONProvider(app)
    client = redis_client or redis.Redis.from_url(settings.redis_url)
    if celery is None:
        from workers.celery_app import make_celery

        celery = make_celery(settings)
    app.extensions["inferno"] = Services(settings=settings, redis=client, store=JobStore(client, settings),
                                         keyring=KeyRing(client, settings), models=ModelRepository(settings.model_dir),
                                         celery=celery, started_at=time.time())

    from api import (access_log, auth, batches, cache, controls, deliveries, errors, events, feature_importance,
                     health, ingest, jobs, metrics, models, openai_batches, openai_files, openai_inference, openapi,
                     ratelimit, request_context, runtime_config, seed_inference, seed_models, seed_predict, traces,
                     websocket)
    from api import versioning
    from api import compression, cors, seed_info, seed_infer, seed_services
    from inferno_jobs.tracing import instrument_flask

    app.config["SOCK_SERVER_OPTIONS"] = websocket.server_options(settings)  # WS /ws: the message size limit

    # compression first: after_request hooks run in reverse, so it compresses the finished response.
    for module in (compression, cors, request_context, errors, access_log, ratelimit, versioning):
        module.init_app(app)
    for module in (seed_info, seed_infer, seed_services):
        app.register_blueprint(module.bp)
    for module in (jobs, deliveries, batches, openai_files, openai_batches, health, models, controls, metrics,
                   openapi, events, openai_inference, seed_inference, seed_predict, websocket, cache, runtime_config,
                   seed_models, auth, ingest, feature_importance, traces):
        app.register_blueprint(module.bp)
    instrument_flask(app, settings)
    return app
