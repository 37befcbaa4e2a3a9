# The word-problem experiment on a GPU: SmolLM2-135M-Instruct imported from its GGUF (two carried halves),
# all four arms, 3 seeds run side by side on the one GPU, then the report. Writes to $OUT.
set -u
cat /tmp/p.aa .dev/b/p.ab > /tmp/smollm2.gguf
echo "gguf sha256 ok: $(sha256sum /tmp/smollm2.gguf | cut -c1-64 | cmp -s - .dev/b/sha && echo yes || echo NO)"
t0=$(date +%s)
python3 - <<'PY' 2>&1 | grep -v "it/s\]" | tail -3
try:
    from selffeed.training.importer import import_gguf
    import_gguf("/tmp/smollm2.gguf", "/tmp/smollm2")
except ImportError:  # the same steps by hand (selffeed.training.importer not in this tree)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained("/tmp", gguf_file="smollm2.gguf")
    tok = AutoTokenizer.from_pretrained("/tmp", gguf_file="smollm2.gguf")
    c = m.config.to_dict(); c.pop("quantization_config", None)
    fresh = AutoModelForCausalLM.from_config(type(m.config).from_dict(c)); fresh.load_state_dict(m.state_dict())
    fresh.save_pretrained("/tmp/smollm2"); tok.save_pretrained("/tmp/smollm2")
print("imported")
PY
echo "import: $(( $(date +%s) - t0 )) s"
CFG="data/configs/word_problems.yaml model.path=/tmp/smollm2 runs_dir=/tmp/runs threads=4 finetune.progress=false retrain.progress=false ${EXTRA:-}"
t1=$(date +%s)
for s in 0 1 2; do
  python3 -m selffeed.loop.rounds $CFG seed=$s --seeds 1 > $OUT/seed$s.log 2>&1 &
done
wait
echo "3 seeds x 4 arms: $(( $(date +%s) - t1 )) s wall"
grep -h "best round" $OUT/seed*.log
python3 -m selffeed.loop.rounds $CFG --seeds 3 --report > $OUT/report.txt 2>&1; tail -60 $OUT/report.txt
cp /tmp/runs/word-problems-experiment/* $OUT/ 2>/dev/null
for f in $OUT/seed*.log; do grep -v "it/s\]\|examples/s\]" $f | tail -5; done
