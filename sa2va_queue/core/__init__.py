"""The base layer: settings, exceptions, codecs, metrics, pseudonyms, model specs, queue names.

Imports nothing of the rest of sa2va_queue, so every other package may depend on it without loops.
"""
