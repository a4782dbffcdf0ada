"""Triton python-backend model templates; `bubo export` copies them into a repository (export/repository.py)."""
