"""The Celery app Flower loads (`celery -A sa2va_queue.cli.flower_app flower`), built from the
SA2VA_* environment so the broker URL (and its password) never appears on a command line."""

from sa2va_queue.core.broker import make_celery
from sa2va_queue.core.settings import Settings

app = make_celery(Settings.load())
