"""The WSGI entry point: ``gunicorn api.wsgi:app``."""

from api import create_app
from inferno_jobs import logs
from inferno_jobs.config import Settings

logs.configure(Settings.from_env())  # JSON lines (INFERNO_LOG_FORMAT) with the request's context
app = create_app()
import os as _os, sys as _sys
if _os.environ.get("SWI"):
    _sys.setswitchinterval(float(_os.environ["SWI"]))
