"""Models and training: build or load a causal LM and its tokenizer, import a GGUF checkpoint, fine-tune
it (AdamW on completion tokens, bf16 autocast where the hardware has it), optionally with LoRA adapters
(``lora`` extra) or data-parallel over several processes (``multigpu`` extra)."""
