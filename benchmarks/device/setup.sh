# Sourced at the start of each device call: the core library's missing dependencies from carried wheels
# (.whl; the GPU image has torch and transformers but not pydantic, datasets or gguf).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >/dev/null 2>&1 || true
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ! python3 -c "import datasets" 2>/dev/null; then  # an older pyarrow: the datasets release that fits it
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/alt/*.whl >/dev/null 2>&1
fi
python3 -c "import torch, transformers, datasets, pydantic, pyarrow, gguf; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, torch.cuda.get_device_name())"
