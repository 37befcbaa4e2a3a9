"""Loop decisions: the training mix, stop rules and the best round."""

import pandas as pd

from selffeed.config import LoopConfig
from selffeed.loop.policy import best_round, stop_reason, training_mix

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


# Data policies (both recipes), the metric's direction and the collapse guard.

def test_replace_trains_on_the_latest_round_only():
    assert pairs(training_mix(SEED, [R1, R2], LoopConfig(mix="replace"))) == [("c", "4"), ("d", "5")]
    assert pairs(training_mix(SEED, [R1, R2.iloc[:0]], LoopConfig(mix="replace"))) == pairs(SEED)  # nothing kept


def test_min_real_fraction_holds_in_every_policy():
    gen = pd.DataFrame({"prompt": [f"g{i}" for i in range(9)], "completion": ["x"] * 9})
    for mix in ("accumulate", "latest", "replace"):
        for fraction in (0.1, 0.5, 0.75):
            cfg = LoopConfig(mix=mix, min_real_fraction=fraction)
            got = training_mix(SEED, [gen, gen], cfg, one_answer_per_prompt=False)
            real = (got["source"] == "seed").mean()
            assert real >= fraction, (mix, fraction, real)
            if mix == "replace":  # just enough real rows: ceil(f * 9 / (1 - f))
                assert (got["source"] == "seed").sum() == {0.1: 1, 0.5: 9, 0.75: 27}[fraction]
            assert set(got.loc[got["source"] == "seed", "prompt"]) <= {"a", "b"}
    # Deterministic, and the repeated real rows differ from round to round.
    cfg = LoopConfig(mix="replace", min_real_fraction=0.5)
    big = pd.DataFrame({"prompt": [str(i) for i in range(50)], "completion": ["s"] * 50})
    one = training_mix(big, [gen], cfg, one_answer_per_prompt=False)
    assert one.equals(training_mix(big, [gen], cfg, one_answer_per_prompt=False))
    two = training_mix(big, [gen, gen], cfg, one_answer_per_prompt=False)
    assert list(one["prompt"][:9]) != list(two["prompt"][:9])


def test_free_text_keeps_every_kept_row_of_every_round():
    r1 = pd.DataFrame({"prompt": ["a", "a"], "completion": [" story 1", " story 2"]})  # "a" is also a seed prompt
    r2 = pd.DataFrame({"prompt": ["a"], "completion": [" story 3"]})
    mix = training_mix(SEED, [r1, r2], LoopConfig(), one_answer_per_prompt=False)
    assert len(mix) == 2 + 3


def text_hist(*ppl_div):
    return [{"round": i, "perplexity": p, "distinct_2": d, "loss": 1.0} for i, (p, d) in enumerate(ppl_div)]


def test_best_round_lower_is_better_for_perplexity():
    h = text_hist((3.0, 0.5), (2.0, 0.5), (2.5, 0.6))
    assert best_round(h, LoopConfig(metric="perplexity")) == 1
    assert best_round(h, LoopConfig(metric="distinct_2")) == 2
    assert best_round(h, LoopConfig(metric="perplexity", direction="higher")) == 0
    assert best_round(hist(0.1, 0.5, 0.3), LoopConfig()) == 1  # accuracy: still higher is better


def test_collapse_guard_stops_on_rising_perplexity_for_patience_rounds():
    cfg = LoopConfig(metric="perplexity", max_rounds=10, patience=2, max_perplexity_rise=0.05)
    assert stop_reason(text_hist((2.0, 0.5), (1.8, 0.5), (1.85, 0.5)), cfg) is None  # within 5%
    assert stop_reason(text_hist((2.0, 0.5), (1.8, 0.5), (2.0, 0.5)), cfg) is None  # one degraded round
    reason = stop_reason(text_hist((2.0, 0.5), (1.8, 0.5), (2.0, 0.5), (1.95, 0.5)), cfg)
    assert reason.startswith("collapse guard: perplexity 1.950 > best 1.800") and "2 round(s) in a row" in reason
    assert best_round(text_hist((2.0, 0.5), (1.8, 0.5), (2.0, 0.5), (1.95, 0.5)), cfg) == 1


def test_collapse_guard_stops_on_falling_diversity():
    cfg = LoopConfig(metric="perplexity", max_rounds=10, patience=1, max_diversity_drop=0.1)
    assert stop_reason(text_hist((2.0, 0.5), (1.9, 0.46)), cfg) is None
    assert "distinct-2 0.440 < best 0.500" in stop_reason(text_hist((2.0, 0.5), (1.9, 0.44)), cfg)
    off = LoopConfig(metric="perplexity", max_rounds=10, patience=5)
    assert stop_reason(text_hist((2.0, 0.5), (3.0, 0.1)), off) is None  # no tolerances: no guard


def test_reinit_trains_the_base_weights_continue_the_previous_round(tmp_path, monkeypatch):
    import torch

    from selffeed.loop import stages
    from tests.conftest import tiny_run_config

    seen = {}

    def fake_train(model, tokenizer, mix, cfg, seed, desc="", progress=None, amp=None):
        seen["weights"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        from selffeed.training.finetune import TrainStats

        return TrainStats(steps=0, examples=len(mix), tokens=0, first_loss=0.0, final_loss=0.0, seconds=0.0)

    for init in ("continue", "reinit"):
        cfg = tiny_run_config(tmp_path / init, **{"loop.init": init, "finetune.steps": 5})
        data = stages.prepare(cfg)
        m0 = stages.finetune(cfg, data)
        monkeypatch.setattr(stages, "train", fake_train)
        stages.retrain(cfg, 1, m0, data, [])
        monkeypatch.undo()
        base, _ = stages._base_model(cfg, data)
        trained, _ = stages.load_checkpoint(m0.path("model"))
        want = base if init == "reinit" else trained
        other = trained if init == "reinit" else base
        for n, p in want.named_parameters():
            assert torch.equal(seen["weights"][n], p), (init, n)
        assert any(not torch.equal(seen["weights"][n], p) for n, p in other.named_parameters())


def test_guard_patience_stops_collapse_before_the_no_improvement_rule():
    h = text_hist((2.0, 0.5), (2.2, 0.5), (2.4, 0.5))
    slow = LoopConfig(metric="perplexity", max_rounds=10, patience=4, max_perplexity_rise=0.05)
    assert stop_reason(h, slow) is None
    quick = slow.model_copy(update={"guard_patience": 2})
    assert stop_reason(h, quick).startswith("collapse guard: perplexity 2.400 > best 2.000")
    assert best_round(h, quick) == 0
