"""Prefect flows that compose the stage tasks, and the ``selffeed`` command line."""
