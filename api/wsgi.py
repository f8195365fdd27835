"""The WSGI entry point: ``gunicorn api.wsgi:app``."""

from api import create_app
from inferno_jobs import logs
from inferno_jobs.config import Settings

logs.configure(Settings.from_env())  # JSON lines (INFERNO_LOG_FORMAT) with the request's context
app = create_app()
