"""Celery workers that own a segmentation model and feed it micro-batches."""
