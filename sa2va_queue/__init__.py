"""sa2va-queue: segment coronary vessels in X-ray angiography through Redis, Celery and SQL."""

__version__ = "0.1.0"
