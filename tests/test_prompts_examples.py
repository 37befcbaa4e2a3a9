"""The three worked examples of docs/bring-your-own-task.md: one full round each on a tiny model.

Each test loads the shipped config, points it at freshly generated example data and a tiny GPT-2,
runs prepare -> fine-tune -> sample -> filter -> retrain -> validate through :func:`selffeed.loop.rounds.run_rounds`,
and checks the corpora on disk, the scores in them (recomputed with the reference packages) and
the validation metric.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from selffeed.config import load_config
from selffeed.filtering.scorers import extract_final
from selffeed.loop.rounds import run_rounds
from selffeed.recipes.examples import write_examples
from selffeed.run import bookkeeping, schema
from selffeed.run.layout import RunLayout, read_json
from selffeed.run.report import round_table
from selffeed.run.status import format_status, run_status

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CONFIGS = Path(__file__).parents[1] / "data" / "configs"
TINY = [
    "threads=1", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.n_inner=64",
    "finetune.steps=300", "finetune.warmup_steps=20", "finetune.progress=false",
    "retrain.steps=30", "retrain.warmup_steps=3", "retrain.progress=false", "sample.k=4", "loop.max_rounds=1",
]


def chrf_ref(hyp: str, ref: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hyp, [ref]).score


def rouge_ref(hyp: str, ref: str) -> float:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=True).score(ref, hyp)["rougeL"].fmeasure


def final_ref(hyp: str, ref: str) -> float:
    return float(extract_final(hyp) == extract_final(ref) and extract_final(hyp) is not None)


def one_round(tmp_path, name: str, *extra: str):
    data = write_examples(tmp_path / "data")
    cfg = load_config(CONFIGS / f"{name}.yaml", [f"runs_dir={tmp_path / 'runs'}", f"prompts.data={data[name]}", *TINY, *extra])
    record = run_rounds(cfg, owner="test")  # the flow's round loop, over the plain stages
    assert record["rounds"] == [0, 1] and record["stopped"]
    return cfg, RunLayout.of(cfg.runs_dir, cfg.name), record


def check_corpora(
    lay: RunLayout, k: int, n_seed: int, n_pool: int, n_held: tuple[int, int], scorer
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits (``n_held``: validation and test rows) and samples on disk as declared; kept scores equal the
    reference implementation's."""
    n_val, n_test = n_held
    for split, n in (("seed", n_seed), ("pool", n_pool), ("val", n_val), ("test", n_test)):
        assert len(pd.read_parquet(lay.split(split))) == n, split
    pool = schema.read(lay.split("pool"), schema.POOL)
    samples = schema.read(lay.samples(1), schema.SAMPLES)
    assert pq.read_schema(lay.samples(1)).equals(schema.SAMPLES, check_metadata=False)
    assert len(samples) == n_pool * k
    # Each sample carries its pool prompt's reference (None where the data has none).
    refs = dict(zip(pool["prompt_id"], pool["reference"]))
    assert [refs[i] for i in samples["prompt_id"]] == samples["reference"].tolist()
    kept = schema.read(lay.kept(1), schema.KEPT)
    assert pq.read_schema(lay.kept(1)).equals(schema.KEPT, check_metadata=False)
    for _, row in kept.iterrows():
        if pd.notna(row["reference"]):
            assert row["score"] == pytest.approx(scorer(row["completion"], row["reference"]), abs=1e-9)
        else:
            assert math.isnan(row["score"]) and row["passed"].startswith("vote")
    return samples, kept


def check_metrics(lay: RunLayout, record: dict, name: str, upper: float) -> None:
    for r in (0, 1):
        m = read_json(lay.metrics(r))
        assert 0.0 <= m[name] <= upper and m["n_scored"] == m["n_rows"]
        assert math.isfinite(m["loss"]) and m["perplexity"] == pytest.approx(math.exp(m["loss"]))
        assert "accuracy" not in m
    assert record["metric"] == name and record["best_round"] in (0, 1)
    # The CLI's table and `selffeed status` show the scored metric.
    table = round_table(bookkeeping.read_history(lay))
    assert table.splitlines()[0].split()[:6] == ["round", "train", "kept", "kept_score", name, "loss"]
    assert f"{name} {read_json(lay.metrics(1))['test'][name]:.3f}" in format_status(run_status(lay.root))  # test figures
    assert read_json(lay.metrics(1))["kept"] == len(schema.read(lay.kept(1), schema.KEPT))


def test_translation_round_with_chrf_best_of_k(tmp_path):
    cfg, lay, record = one_round(tmp_path, "translation", "filter.min_score=0")
    samples, kept = check_corpora(lay, 4, 18, 18, (6, 6), chrf_ref)
    # Best of k: exactly one row per prompt, the one with the highest chrF among its samples.
    assert sorted(kept["prompt_id"]) == sorted(samples["prompt_id"].unique())
    scores = [chrf_ref(c, r) for c, r in zip(samples["completion"], samples["reference"])]
    best = samples.assign(s=scores).groupby("prompt_id")["s"].max()
    assert kept.set_index("prompt_id")["score"].to_dict() == pytest.approx(best.to_dict())
    assert set(kept["passed"]) == {"min_score,best_of_k,length,dedup"}
    check_metrics(lay, record, "chrf", 100.0)
    # The retrain mixed the kept rows into the seed.
    assert read_json(lay.metrics(1))["train_size"] == 18 + len(kept)


def test_summarization_round_with_rouge_l(tmp_path):
    cfg, lay, record = one_round(tmp_path, "summarization")
    assert cfg.filter.min_score == 0.5 and cfg.filter.best_of_k
    samples, kept = check_corpora(lay, 4, 20, 18, (5, 5), rouge_ref)
    assert (kept["score"] >= 0.5).all() and kept["prompt_id"].is_unique
    scores = pd.Series([rouge_ref(c, r) for c, r in zip(samples["completion"], samples["reference"])])
    n_prompts_over = samples.assign(s=scores).groupby("prompt_id")["s"].max().ge(0.5).sum()
    assert len(kept) == n_prompts_over
    check_metrics(lay, record, "rougeL", 1.0)


def test_qa_round_with_answer_extraction_and_vote(tmp_path):
    cfg, lay, record = one_round(tmp_path, "qa")
    samples, kept = check_corpora(lay, 4, 18, 22, (10, 10), final_ref)
    assert samples["reference"].isna().sum() == 10 * 4  # the 10 prompts without an answer, k samples each
    answered = kept[kept["reference"].notna()]
    assert (answered["score"] == 1.0).all()  # min_score 1.0: only right final answers
    assert set(answered["passed"]) <= {"min_score,length,dedup"}
    # Every sample of an answered prompt whose final answer is right was kept (dedup aside).
    right = samples[samples["reference"].notna()]
    right = right[[final_ref(c, r) == 1.0 for c, r in zip(right["completion"], right["reference"])]]
    assert len(answered) == len(right.drop_duplicates(["prompt", "completion"]))
    # Unanswered prompts: kept rows agree with their prompt's majority final answer.
    for _, row in kept[kept["reference"].isna()].iterrows():
        assert row["agreement"] >= 0.5 and extract_final(row["completion"]) == row["answer"]
    check_metrics(lay, record, "final_answer", 1.0)


USER_SCORER = '''
def overlap(samples, references=None, **kw):
    """Share of the reference's words that the completion contains."""
    return [len(set(s.split()) & set(r.split())) / len(set(r.split())) for s, r in zip(samples, references)]
'''


def test_user_scorer_module_function_is_the_filter_and_the_metric(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_task_scores.py").write_text(USER_SCORER)
    monkeypatch.syspath_prepend(str(tmp_path / "mine"))  # the user's own file, outside the package
    cfg, lay, record = one_round(tmp_path, "translation", "prompts.scorer=my_task_scores:overlap", "filter.min_score=0.3")
    samples, kept = check_corpora(lay, 4, 18, 18, (6, 6), lambda c, r: len(set(c.split()) & set(r.split())) / len(set(r.split())))
    assert (kept["score"] >= 0.3).all() and kept["prompt_id"].is_unique and len(kept) > 0
    check_metrics(lay, record, "overlap", 1.0)
