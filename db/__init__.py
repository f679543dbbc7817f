"""Persistence: SQLAlchemy 2 models, one engine per process, content-addressed blobs, migrations."""
