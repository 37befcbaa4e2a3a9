"""Sampling k completions per prompt: the batched KV-cache sampler, the sample stage as shards that any
number of workers write, and the optional vLLM engine (``vllm`` extra)."""
