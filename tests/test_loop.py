"""Loop decisions: the training mix, stop rules and the best round."""

import pandas as pd

from selffeed.config import LoopConfig
from selffeed.loop import best_round, stop_reason, training_mix

SEED = pd.DataFrame({"prompt": ["a", "b"], "completion": ["1", "2"]})
R1 = pd.DataFrame({"prompt": ["c", "a"], "completion": ["3", "9"]})  # "a" is labelled: never overridden
R2 = pd.DataFrame({"prompt": ["c", "d"], "completion": ["4", "5"]})


def pairs(df):
    return sorted(zip(df["prompt"], df["completion"]))


def test_accumulate_uses_every_round_latest_label_wins():
    mix = training_mix(SEED, [R1, R2], LoopConfig(mix="accumulate"))
    assert pairs(mix) == [("a", "1"), ("b", "2"), ("c", "4"), ("d", "5")]
    assert mix["source"].tolist().count("seed") == 2


def test_latest_and_seed_only():
    assert pairs(training_mix(SEED, [R1, R2], LoopConfig(mix="latest"))) == [("a", "1"), ("b", "2"), ("c", "4"), ("d", "5")]
    assert pairs(training_mix(SEED, [R1], LoopConfig(mix="latest"))) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert pairs(training_mix(SEED, [R1, R2], LoopConfig(mix="seed_only"))) == pairs(SEED)
    assert pairs(training_mix(SEED, [], LoopConfig())) == pairs(SEED)


def test_several_rows_of_one_prompt_in_a_round_are_kept():
    r = pd.DataFrame({"prompt": ["c", "c"], "completion": ["3", "33"]})
    assert pairs(training_mix(SEED, [r], LoopConfig())) == [("a", "1"), ("b", "2"), ("c", "3"), ("c", "33")]


def hist(*scores, loss=1.0):
    return [{"round": i, "accuracy_hardest": s, "accuracy": s, "loss": loss} for i, s in enumerate(scores)]


def test_best_round_ties_go_to_the_earlier_round():
    cfg = LoopConfig()
    assert best_round(hist(0.1, 0.5, 0.5, 0.3), cfg) == 1
    assert best_round(hist(0.1, 0.15), LoopConfig(min_delta=0.1)) == 0


def test_stop_rules():
    cfg = LoopConfig(max_rounds=5, patience=2)
    assert stop_reason(hist(0.1, 0.2), cfg) is None
    assert "patience=2" in stop_reason(hist(0.1, 0.3, 0.2, 0.25), cfg)
    assert stop_reason(hist(0.1, 0.3, 0.2), cfg) is None
    assert "max_rounds=5" in stop_reason(hist(*[0.1 * i for i in range(6)]), cfg)
    assert "loss_threshold" in stop_reason(hist(0.1, loss=0.01), LoopConfig(loss_threshold=0.05))
    assert "max_rounds=0" in stop_reason(hist(0.1), LoopConfig(max_rounds=0))
