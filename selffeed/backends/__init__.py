"""Optional backends, each behind an extra and imported lazily: vLLM sampling (``vllm``), LoRA
fine-tuning (``lora``) and multi-process training with accelerate (``multigpu``). Nothing here is
needed by the default loop, and every module imports without its extra installed."""
