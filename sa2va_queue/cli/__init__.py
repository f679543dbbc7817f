"""The command line on top of everything: `sa2va-queue ...` (see main.py)."""
