"""Prefect tasks: thin wrappers, one per stage, around :mod:`selffeed.loop.stages`."""
