"""Controlled experiments: the self-improvement arm against its control arms (seed-only, unfiltered,
oracle) over several seeds, their summary, report and figure."""
