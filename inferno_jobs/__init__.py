"""inferno-jobs: a self-hosted, queue-driven asynchronous inference job system."""

__version__ = "0.1.0"
