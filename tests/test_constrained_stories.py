"""The constrained-story recipe: the scorer and each guard on hand-made stories (a good one, a word list, a
loop, a cut-off one), its splits, the unguarded control, and a real round on the imported SmolLM2."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from selffeed.config import ConfigError, load_config
from selffeed.experiments.arms import control_config
from selffeed.filtering.text import repeat_ratio
from selffeed.loop.rounds import run_rounds
from selffeed.recipes.constrained_stories import (
    WORDS,
    checks,
    constraint_score,
    constraints_of,
    make_splits,
    prompt_of,
    request,
)
from selffeed.recipes.story_checks import ref_perplexities, story_filters, story_metrics
from selffeed.run import schema
from selffeed.run.bookkeeping import read_history
from selffeed.run.layout import RunLayout, read_json
from selffeed.training.model import load_checkpoint

PROMPT = request(["owl", "lantern", "river"], 40, 150)
GOOD = (
    "Once upon a time, a little owl named Pip lived in a tall oak tree beside a quiet river. Every night Pip "
    "carried a small lantern so that the other animals could find their way home through the dark wood. One "
    "windy evening the lantern went out, and a lost rabbit began to cry. Pip remembered the moon and flew up "
    "high, calling softly until the rabbit followed her voice to the river bank. From then on the animals "
    "called Pip the brightest friend in the forest."
)
OTHER = (
    "Once upon a time there was a tiny boat that wanted to see the sea. It floated down the river past farms "
    "and mills, and at night an old owl sat on its mast holding a lantern to light the water. The boat was "
    "scared of the waves, but the owl told it stories until it fell asleep. In the morning the boat woke up "
    "in a wide blue bay, and the gulls sang hello."
)
WORD_LIST = "Once upon a time owl lantern river " + " ".join(w for w in WORDS[:45] if w != "river") + "."
LOOP = "Once upon a time, " + "the owl took the lantern to the river and the owl was happy. " * 6
CUT_OFF = GOOD[:60]  # "Once upon a time, a little owl named Pip lived in a tall oak "


def test_the_scorer_reads_its_constraints_from_the_prompt():
    assert constraints_of(PROMPT) == (["owl", "lantern", "river"], 40, 150)
    good, cut = checks(GOOD, PROMPT), checks(CUT_OFF, PROMPT)
    assert all(good[k] for k in ("opening", "words", "length", "ending"))
    assert not cut["ending"] and not cut["length"] and not cut["word:river"] and cut["opening"]
    scores = constraint_score([GOOD, CUT_OFF, "Long ago an owl slept.", WORD_LIST, LOOP], prompts=[PROMPT] * 5)
    assert scores[0] == 1.0 and scores[1] == pytest.approx(2 / 6)
    assert scores[2] == pytest.approx(2 / 6)  # "owl" and the ending: no opening, two words and the length missing
    # The checker alone is fooled: a word list and a loop meet every constraint. The guards are for them.
    assert scores[3] == 1.0 and scores[4] == 1.0
    # Plurals count; a longer word that contains a required one does not.
    assert checks("Once upon a time two owls met.", PROMPT)["word:owl"]
    assert not checks("Once upon a time a rivers-edge and an owlet.", request(["owl"], 1, 9))["word:owl"]


def test_the_repetition_guard_catches_loops_but_not_stories():
    assert repeat_ratio(GOOD) < 0.05 and repeat_ratio(LOOP) > 0.7
    assert repeat_ratio(WORD_LIST) == 0  # a list of distinct words repeats nothing: the base model catches it


def _samples(stories: list[str], prompt_ids: list[int], tokenizer=None) -> pd.DataFrame:
    prompts = [prompt_of(request(["owl", "lantern", "river"], 40, 150) + f" ({i})", tokenizer) for i in prompt_ids]
    return pd.DataFrame({
        "prompt_id": prompt_ids, "sample_idx": range(len(stories)), "prompt": prompts, "completion": stories,
        "score": constraint_score(stories, prompts=prompts),
    })


def test_story_filters_keep_the_best_story_that_passes_the_guards(tmp_path):
    cfg = load_config("data/configs/stories.yaml", [f"runs_dir={tmp_path}", "constrained_stories.max_ref_perplexity=null"])
    near_copy = GOOD.replace("Pip", "Wren").replace("rabbit", "hedgehog").replace("moon", "stars")
    samples = _samples([LOOP, CUT_OFF, GOOD, LOOP, OTHER, near_copy], [0, 0, 0, 1, 1, 2])
    kept = story_filters(samples, cfg)
    # Prompt 0: the loop and the cut-off story lose; prompt 1: the loop loses; prompt 2's story is prompt
    # 0's with three names changed (a near-copy of a story kept before) and loses too.
    assert kept["completion"].tolist() == [GOOD, OTHER] and kept["prompt_id"].tolist() == [0, 1]
    assert kept["passed"].iloc[0] == "length,min_score,repetition,best_of_k,near_dup"
    # Earlier rounds' stories count as kept before.
    assert story_filters(samples, cfg, earlier=[OTHER])["prompt_id"].tolist() == [0]
    # Unguarded, the checker alone decides: each prompt's first story that meets every constraint wins.
    unguarded = control_config(cfg, "unguarded", rounds=2)
    assert story_filters(samples, unguarded)["completion"].tolist() == [LOOP, LOOP, near_copy]


def test_story_metrics_measure_constraints_and_diversity():
    m = story_metrics([PROMPT] * 3, [GOOD, CUT_OFF, LOOP])
    assert m["constraints_met"] == pytest.approx(2 / 3) and m["met_ending"] == pytest.approx(2 / 3)
    assert m["constraint_score"] == pytest.approx((1 + 2 / 6 + 1) / 3)
    same = story_metrics([PROMPT] * 3, [GOOD] * 3)
    assert same["distinct_2"] == pytest.approx(story_metrics([PROMPT], [GOOD])["distinct_2"] / 3)


def test_splits_hold_out_word_sets_and_label_nothing(tmp_path):
    cfg = load_config("data/configs/stories.yaml", [
        f"runs_dir={tmp_path}", "model.path=null", "constrained_stories.max_ref_perplexity=null",
    ]).constrained_stories
    splits = make_splits(cfg, seed=3)
    assert splits["seed"].empty and (splits["val"]["completion"] == "").all()
    assert len(splits["pool"]) == cfg.pool_per_round * cfg.pool_slices and len(splits["test"]) == cfg.test_prompts
    sets = {k: {frozenset(constraints_of(p)[0]) for p in splits[k]["prompt"]} for k in ("pool", "val", "test")}
    assert not sets["pool"] & sets["val"] and not sets["pool"] & sets["test"] and not sets["val"] & sets["test"]
    assert splits["pool"]["slice"].max() == cfg.pool_slices - 1
    assert make_splits(cfg, seed=3)["test"].equals(splits["test"])
    with pytest.raises(ValueError, match="constrained_stories.pool_per_round: cannot draw"):
        few = {"words": ["owl", "map", "key", "hat"], "test_prompts": 1, "val_prompts": 1, "pool_per_round": 2}
        make_splits(cfg.model_copy(update=few), seed=0)  # 4 word sets of 3 exist; the pool asks for 8


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="min_words .* is above max_words"):
        load_config("data/configs/stories.yaml", ["constrained_stories.min_words=200"])
    with pytest.raises(ConfigError, match="constrained_stories.max_ref_perplexity: needs model.path"):
        load_config("data/configs/stories.yaml", ["model.path=null"])
    with pytest.raises(ConfigError, match="loop.metric: 'accuracy' is not a validation metric"):
        load_config("data/configs/stories.yaml", ["loop.metric=accuracy"])
    with pytest.raises(ConfigError, match="--control unguarded: recipe arithmetic has no guards"):
        control_config(load_config("data/configs/arithmetic.yaml"), "unguarded", rounds=1)


@pytest.mark.slow
@pytest.mark.integration
def test_the_base_model_tells_a_story_from_a_word_list(smollm2, tmp_path):
    reference = load_checkpoint(smollm2)
    chat = prompt_of(PROMPT, reference[1])  # the run's prompts go through the chat template
    good, word_list = ref_perplexities(reference, [chat] * 2, [GOOD, WORD_LIST])
    assert good < 25.0 < word_list  # the config's max_ref_perplexity sits between them
    cfg = load_config("data/configs/stories.yaml", [f"runs_dir={tmp_path}", f"model.path={smollm2}"])
    samples = _samples([WORD_LIST, GOOD], [0, 0], reference[1])
    kept = story_filters(samples, cfg, reference=reference)
    assert kept["completion"].tolist() == [GOOD] and "ref_perplexity" in kept["passed"].iloc[0]
    assert story_filters(samples, control_config(cfg, "unguarded", 1))["completion"].tolist() == [WORD_LIST]


@pytest.mark.slow
@pytest.mark.integration
def test_a_story_round_on_the_imported_model(smollm2, tmp_path):
    cfg = load_config("data/configs/stories.yaml", [
        f"model.path={smollm2}", f"runs_dir={tmp_path}", "name=stories", "constrained_stories.pool_per_round=3",
        "constrained_stories.pool_slices=1", "constrained_stories.val_prompts=2", "constrained_stories.test_prompts=2",
        "constrained_stories.max_new_tokens=40", "constrained_stories.min_words=5", "sample.k=2",
        "filter.min_score=0.5", "retrain.steps=2", "retrain.batch_size=2", "retrain.progress=false", "loop.max_rounds=1",
    ])
    run_rounds(cfg)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    history = read_history(lay)
    assert [m["round"] for m in history] == [0, 1]
    m = history[1]
    assert {"constraints_met", "distinct_2", "repeat_ratio", "perplexity"} <= set(m) and m["test"]["n_rows"] == 2
    assert m["labels"]["total"] == 0  # no story and no validation prompt carries a label
    assert read_json(lay.round_manifest(0))["stages"]["finetune"]["meta"]["steps"] == 0
    samples = schema.read(lay.samples(1), schema.SAMPLES)
    assert len(samples) == 3 * 2 and samples["prompt"].str.endswith("<|im_start|>assistant\n").all()
    kept = schema.read(lay.kept(1), schema.KEPT)
    assert kept["prompt_id"].is_unique and (kept["score"] >= 0.5).all()


def test_a_round_that_keeps_no_story_leaves_the_model_as_it_is(tmp_path):
    # A tiny model writes no 40-word story in 8 tokens: nothing is kept, there is no seed, so nothing trains.
    cfg = load_config("data/configs/stories.yaml", [
        f"runs_dir={tmp_path}", "model.path=null", "constrained_stories.max_ref_perplexity=null", "threads=1",
        "model.n_embd=16", "model.n_layer=1", "model.n_head=2", "model.n_inner=32", "model.n_positions=256",
        "constrained_stories.pool_per_round=2", "constrained_stories.pool_slices=1", "constrained_stories.val_prompts=2",
        "constrained_stories.test_prompts=2", "constrained_stories.max_new_tokens=8", "sample.k=2", "loop.max_rounds=1",
    ])
    run_rounds(cfg)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    assert schema.read(lay.kept(1), schema.KEPT).empty
    retrain = read_json(lay.round_manifest(1))["stages"]["retrain"]["meta"]
    assert retrain["steps"] == 0 and retrain["train_size"] == 0 and retrain["train_loss"] is None
    before = (lay.model(0) / "model.safetensors").read_bytes()
    assert (lay.model(1) / "model.safetensors").read_bytes() == before
