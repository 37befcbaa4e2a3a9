"""A run and its bookkeeping: the on-disk layout (the one module that builds paths), the Parquet schemas,
manifests and content-addressed stage keys, the writer lock, input checks, the history and best-round
record, and the run's status and per-round report read back from its files."""
