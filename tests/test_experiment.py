"""Controlled experiments: arm configs, the oracle filter, aggregation across seeds, the PNG report,
and the experiment flow end to end on tiny runs."""

from __future__ import annotations

import json
import struct

import pandas as pd
import pytest

from selffeed.config import ConfigError, LoopConfig, load_config
from selffeed.experiments import arms as ex
from selffeed.experiments.plots import figure_pixels
from selffeed.filtering.filters import apply_filters
from selffeed.filtering.labels import oracle_kept, with_views
from selffeed.recipes import recipe_for
from selffeed.recipes.arithmetic import encode, true_completion
from selffeed.run.layout import ExperimentLayout, RunLayout, write_json
from tests.conftest import tiny_run_config

CONFIG = "data/configs/arithmetic.yaml"


def test_arms_share_rounds_and_steps_and_differ_only_in_data():
    cfg = load_config(CONFIG, ["loop.max_rounds=3", "loop.patience=1", "loop.loss_threshold=0.5"])
    runs = ex.arm_configs(cfg, ex.ARMS, seeds=2)
    assert [(a, s) for a, s, _ in runs] == [(a, s) for s in (0, 1) for a in ex.ARMS]
    for arm, seed, c in runs:
        assert c.name == f"arith-demo-{arm}-s{seed}" and c.seed == seed
        assert (c.loop.max_rounds, c.loop.patience, c.loop.loss_threshold) == (3, 4, None)
        assert (c.finetune, c.retrain) == (cfg.finetune, cfg.retrain)
    by = {a: c for a, s, c in runs if s == 0}
    assert by["self"].filter == cfg.filter and by["self"].loop.mix == "accumulate"
    assert by["seed_only"].loop.mix == "seed_only"
    assert not by["unfiltered"].filter.vote and by["unfiltered"].sample.k == 1
    assert by["oracle"].filter.oracle and by["oracle"].sample.k == 1
    assert cfg.name == "arith-demo" and cfg.loop.patience == 1  # the input is not changed
    strict = load_config(CONFIG, ["filter.label_free=true"])  # the oracle arm is a control: labels by design
    assert ex.arm_config(strict, "oracle", 0).filter.oracle and ex.arm_config(strict, "unfiltered", 0).filter.label_free


def test_every_arm_samples_the_same_prompts_and_views():
    cfg = load_config(CONFIG)
    assert cfg.filter.views and cfg.arithmetic.offset_views == 2  # the demo asks each prompt six ways
    pool = pd.DataFrame({"prompt_id": [0, 1], "prompt": [encode(123, 45, 3), encode(608, 71, 3)], "difficulty": 3})
    sampled = {}
    for arm in ("self", "unfiltered", "oracle"):
        c = ex.arm_config(cfg, arm, 0)
        recipe = recipe_for(c)
        # What stages.sample asks the model: the round's pool slice, with every view when filter.views is on.
        assert (c.arithmetic, c.curriculum, c.filter.views) == (cfg.arithmetic, cfg.curriculum, True)
        sampled[arm] = with_views(pool, recipe.views)[["prompt_id", "prompt"]].values.tolist()
    assert len(sampled["self"]) == 12 and sampled["unfiltered"] == sampled["oracle"] == sampled["self"]


def _view_samples(cfg, k: int) -> pd.DataFrame:
    """k sampled answers, all wrong but the first of prompt 0's own view, for each view of two prompts."""
    pool = pd.DataFrame({"prompt_id": [0, 1], "prompt": [encode(12, 34, 2), encode(5, 7, 2)], "difficulty": 2})
    views = with_views(pool, recipe_for(cfg).views)
    rows = views.loc[views.index.repeat(k)].reset_index(drop=True)
    rows["sample_idx"] = rows["view"] * k + rows.groupby(["prompt_id", "view"]).cumcount()
    rows["completion"] = rows["answer"] = "999"
    rows.loc[0, ["completion", "answer"]] = true_completion(rows.loc[0, "prompt"], 2)
    return rows


def test_oracle_labels_every_prompt_and_view_with_its_own_true_answer(tmp_path):
    cfg = tiny_run_config(tmp_path, **{"filter.oracle": "true", "filter.views": "true", "arithmetic.offset_views": 1})
    samples = _view_samples(cfg, k=2)
    kept = oracle_kept(cfg, samples)
    pairs = samples[["prompt_id", "prompt"]].drop_duplicates()
    assert kept[["prompt_id", "prompt"]].values.tolist() == pairs.values.tolist() and len(kept) == 8  # 4 views each
    assert list(kept["completion"]) == [true_completion(p, 2) for p in kept["prompt"]]
    assert list(kept["answer"]) == list(kept["completion"]) and set(kept["passed"]) == {"oracle"}
    assert list(kept["votes"]) == [1] + [0] * 7 and list(kept["agreement"]) == pytest.approx([0.5] + [0.0] * 7)


def test_unfiltered_arm_keeps_one_raw_answer_of_every_prompt_and_view(tmp_path):
    cfg = ex.arm_config(tiny_run_config(tmp_path, **{"filter.views": "true", "arithmetic.offset_views": 1}),
                        "unfiltered", 0)
    samples = _view_samples(cfg, k=cfg.sample.k)
    kept = apply_filters(samples, cfg.filter)
    cols = ["prompt_id", "prompt", "answer"]
    assert kept[cols].values.tolist() == samples[cols].values.tolist()  # no vote, no mapping between views


def test_summarizing_an_experiment_that_never_ran_names_the_missing_run(tmp_path):
    cfg = load_config(CONFIG, [f"runs_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"arith-demo-self-s0: no committed rounds"):
        ex.summarize_runs(cfg, ["self"], seeds=1)


def _commit(lay, history: list[dict]) -> None:
    """``history`` written as a run's committed rounds (metrics.json, then manifest.json)."""
    for m in history:
        write_json(lay.metrics(m["round"]), m)
        write_json(lay.round_manifest(m["round"]), {"round": m["round"], "stages": {}})


def test_summarizing_arms_run_on_fewer_seeds_uses_the_seeds_each_has(tmp_path):
    # self and seed_only on seeds 0 and 1; the oracle only on seed 0 (as a 2-core experiment runs it).
    cfg = load_config(CONFIG, [f"runs_dir={tmp_path}", "loop.max_rounds=1"])
    h = _histories()
    for arm, s_ in [("self", 0), ("self", 1), ("seed_only", 0), ("seed_only", 1), ("oracle", 0)]:
        _commit(RunLayout.of(tmp_path, ex.arm_config(cfg, arm, s_).name), h[arm][s_])
    s = ex.summarize_runs(cfg, ["self", "seed_only", "oracle"], seeds=2)
    assert s["seeds"] == [0, 1]
    assert s["per_arm"]["oracle"]["rounds"][1]["accuracy"]["3"]["n"] == 1
    assert s["per_arm"]["self"]["rounds"][1]["accuracy"]["3"]["n"] == 2
    assert s["gap_closure"]["final"]["per_seed"] == {0: pytest.approx(0.5)}  # only seed 0 has all three arms
    assert s["self_minus"]["seed_only"]["wins"] == 2
    assert "self - oracle on 3 at the final round: -0.200 (sd 0.000), self ahead in 0/1 seeds" in ex.findings(s)
    with pytest.raises(FileNotFoundError, match=r"arith-demo-unfiltered-s0: no committed rounds"):
        ex.summarize_runs(cfg, ["self", "unfiltered"], seeds=2)


def test_bad_arms_and_an_oracle_without_truth_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="--arms 'self,nope'"):
        ex.parse_arms("self,nope")
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "a", "answer": "b"}\n' * 4)
    cfg = load_config(None, ["recipe=prompts", f"prompts.data={data}", "prompts.reference_column=answer"])
    with pytest.raises(ConfigError, match="arm oracle: recipe prompts has no true answers"):
        ex.arm_config(cfg, "oracle", 0)


def test_oracle_keeps_one_true_label_per_prompt_without_views(tmp_path):
    cfg = tiny_run_config(tmp_path, **{"filter.oracle": "true"})
    prompts = [encode(12, 34, 2), encode(5, 7, 2)]
    samples = pd.DataFrame({
        "prompt_id": [0, 0, 0, 1, 1, 1],
        "sample_idx": [0, 1, 2, 0, 1, 2],
        "prompt": [prompts[0]] * 3 + [prompts[1]] * 3,
        "completion": ["644", "000", "644", "210", "999", "210"],  # 12+34 is "640" (reversed), 5+7 is "210"
        "answer": ["644", "000", "644", "210", "999", "210"],
        "difficulty": [2] * 6,
    })
    kept = oracle_kept(cfg, samples)
    assert list(kept["prompt_id"]) == [0, 1]
    assert list(kept["completion"]) == [true_completion(p, 2) for p in prompts]
    assert list(kept["passed"]) == ["oracle", "oracle"] and list(kept["votes"]) == [0, 2]
    assert list(kept["agreement"]) == pytest.approx([0.0, 2 / 3])


@pytest.mark.parametrize(
    "extra, fragment", [(["--arms", "self,nope"], "--arms 'self,nope'"), (["--seeds", "0"], "--seeds 0")]
)
def test_cli_rejects_bad_arms_and_seeds_before_writing(extra, fragment, tmp_path, capsys):
    from flows.cli import main

    assert main(["experiment", CONFIG, f"runs_dir={tmp_path / 'runs'}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selffeed: error: ") and fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def _history(accs: list[tuple[float, float]], kept: int | None = 10, precision: float | None = 0.9) -> list[dict]:
    out = []
    for r, (a2, a3) in enumerate(accs):
        m = {"round": r, "accuracy_by_difficulty": {"2": a2, "3": a3}, "accuracy": (a2 + a3) / 2,
             "accuracy_hardest": a3}
        if r:
            m.update(kept=kept, kept_precision=precision)
        out.append(m)
    return out


def _histories():
    # hardest accuracy per round: seed_only flat at .5; oracle climbs to .9; self to .7 / .8.
    return {
        "self": {0: _history([(0.8, 0.5), (0.9, 0.7)], precision=0.9),
                 1: _history([(0.8, 0.5), (0.9, 0.8)], precision=0.7)},
        "seed_only": {0: _history([(0.8, 0.5), (0.8, 0.5)], kept=None, precision=None),
                      1: _history([(0.8, 0.5), (0.8, 0.5)], kept=None, precision=None)},
        "oracle": {0: _history([(0.8, 0.5), (1.0, 0.9)], precision=1.0),
                   1: _history([(0.8, 0.5), (1.0, 0.9)], precision=1.0)},
        "unfiltered": {0: _history([(0.8, 0.5), (0.6, 0.3)], precision=0.2),
                       1: _history([(0.8, 0.5), (0.6, 0.4)], precision=0.3)},
    }


def test_summary_means_sds_gap_closure_and_precision():
    s = ex.summarize(_histories(), "demo")
    assert s["keys"] == ["2", "3", "all"] and s["hardest"] == "3" and s["rounds"] == [0, 1] and s["seeds"] == [0, 1]
    last = s["per_arm"]["self"]["rounds"][1]
    assert last["accuracy"]["3"]["mean"] == pytest.approx(0.75)
    assert last["accuracy"]["3"]["sd"] == pytest.approx(0.0707107, abs=1e-6)  # sample sd of .7, .8
    assert last["kept"]["mean"] == 10 and last["precision"]["mean"] == pytest.approx(0.8)
    assert s["per_arm"]["seed_only"]["rounds"][1]["precision"]["mean"] is None
    closure = s["gap_closure"]["final"]
    assert closure["per_seed"] == {0: pytest.approx(0.5), 1: pytest.approx(0.75)}
    assert closure["mean"] == pytest.approx(0.625)
    assert s["gap_closure"]["best"]["mean"] == pytest.approx(0.625)
    assert s["per_arm"]["self"]["worst_precision"] == pytest.approx(0.7)
    assert s["self_minus"]["unfiltered"]["wins"] == 2 and s["self_minus"]["unfiltered"]["mean"] == pytest.approx(0.4)
    text = "\n".join(ex.findings(s))
    assert "gap closure on 3 at the final round: 0.62 ± 0.18" in text and "self ahead in 2/2 seeds" in text
    assert "0.750 ± 0.071" in ex.final_table(s)


def _figures(a3: float) -> dict:
    return {"accuracy_by_difficulty": {"2": 1.0, "3": a3}, "accuracy": (1 + a3) / 2, "accuracy_hardest": a3}


def _split_round(r: int, val3: float, test3: float, kept: int | None = None, prompts: int | None = None) -> dict:
    """A round of the new layout: validation figures at the top level, test figures under "test"."""
    m = {"round": r, **_figures(val3), "test": _figures(test3)}
    return {**m, "kept": kept, "kept_prompts": prompts} if r else m


def test_summary_reports_test_figures_and_picks_the_best_round_on_validation():
    # self: validation peaks at round 1 (test .6), test peaks at round 2 (validation .7).
    self_ = [_split_round(0, 0.5, 0.4), _split_round(1, 0.9, 0.6, 60, 10), _split_round(2, 0.7, 0.8, 120, 20)]
    flat = [_split_round(r, 0.5, 0.4) for r in range(3)]
    oracle = [_split_round(0, 0.5, 0.4), _split_round(1, 1.0, 1.0, 60, 10), _split_round(2, 1.0, 0.9, 120, 20)]
    s = ex.summarize({"self": {0: self_}, "seed_only": {0: flat}, "oracle": {0: oracle}}, "demo")
    rounds = s["per_arm"]["self"]["rounds"]
    assert [r["accuracy"]["3"]["mean"] for r in rounds] == [0.4, 0.6, 0.8]  # test, not validation
    assert [(r["kept"]["mean"], r["prompts"]["mean"]) for r in rounds[1:]] == [(60, 10), (120, 20)]
    assert s["per_arm"]["self"]["best_round"] == {0: 1} and s["per_arm"]["self"]["best"] == {0: pytest.approx(0.6)}
    assert s["per_arm"]["oracle"]["best_round"] == {0: 1}  # validation ties go to the earlier round
    assert s["gap_closure"]["best"]["per_seed"] == {0: pytest.approx((0.6 - 0.4) / (1.0 - 0.4))}
    assert s["gap_closure"]["final"]["per_seed"] == {0: pytest.approx((0.8 - 0.4) / (0.9 - 0.4))}
    table = ex.arm_table(s, "self")
    assert table.splitlines()[0].split()[:4] == ["round", "kept", "prompts", "precision"]
    assert table.splitlines()[2].split()[:3] == ["1", "60", "10"]


def test_the_best_round_follows_the_loop_rule():
    h = [_split_round(0, 0.50, 0.4), _split_round(1, 0.55, 0.9)]
    s = ex.summarize({"self": {0: h}}, "demo", LoopConfig(metric="accuracy_hardest", min_delta=0.1))
    assert s["per_arm"]["self"]["best_round"] == {0: 0} and s["per_arm"]["self"]["best"] == {0: 0.4}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_files_and_a_valid_png(tmp_path):
    s = ex.summarize(_histories(), "demo")
    lay = ExperimentLayout.of(tmp_path, "demo")
    ex.write_report(lay, s, "selffeed experiment x.yaml --seeds 2")
    assert _png_size(lay.plot.read_bytes()) == figure_pixels(s) == (1350, 360)
    md = lay.report_md.read_text()
    assert "selffeed experiment x.yaml --seeds 2" in md and "## Arm unfiltered" in md and "accuracy.png" in md
    assert json.loads(lay.report_json.read_text())["gap_closure"]["final"]["per_seed"]["1"] == pytest.approx(0.75)
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.integration
def test_experiment_flow_runs_arms_and_writes_the_report(tmp_path, prefect_harness):
    from flows.experiment import experiment

    cfg = tiny_run_config(tmp_path, name="exp")
    out = experiment(cfg, seeds=1, arms=["self", "oracle"], command="test")
    lay = ExperimentLayout.of(cfg.runs_dir, "exp")
    assert set(out["report"].values()) == {str(lay.report_md), str(lay.report_json), str(lay.plot)}
    report = json.loads(lay.report_json.read_text())
    assert report["arms"] == ["self", "oracle"] and report["rounds"] == [0, 1]
    assert report["per_arm"]["oracle"]["rounds"][1]["precision"]["mean"] == 1.0  # true labels
    assert report["per_arm"]["oracle"]["rounds"][1]["kept"]["mean"] == cfg.arithmetic.pool_per_round  # one per prompt
    md = lay.report_md.read_text()
    assert "## Arm self" in md and "## Arm oracle" in md
    assert _png_size(lay.plot.read_bytes()) == figure_pixels(report)
    for arm in ("self", "oracle"):
        assert (tmp_path / "runs" / f"exp-{arm}-s0" / "round-001" / "metrics.json").is_file()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:  # the report is attached to the flow run
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["exp-experiment", "exp-experiment-plot"]))
        )
    by_type = {a.type: a.data for a in found}
    assert by_type["image"].startswith("data:image/png;base64,") and "## Arm oracle" in by_type["markdown"]

    # The seed's arms fine-tuned round 0 once: the oracle arm copied the self arm's model and its figures.
    runs = {arm: RunLayout.of(cfg.runs_dir, f"exp-{arm}-s0") for arm in ("self", "oracle")}
    r0 = {arm: json.loads(lay.round_manifest(0).read_text())["stages"] for arm, lay in runs.items()}
    assert r0["oracle"]["finetune"]["digests"] == r0["self"]["finetune"]["digests"]
    assert r0["oracle"]["finetune"]["paths"]["model"] == str(runs["oracle"].model(0))  # its own copy
    assert r0["oracle"]["validate"]["meta"]["measured_by"] == "exp-self-s0/round-000"
    assert "measured_by" not in r0["self"]["validate"]["meta"]
    ran = _task_runs("exp-self-s0", "exp-oracle-s0")
    assert ran["finetune-r0"] == 1 and ran["finetune-r0-adopted"] == 1 and ran["validate-r0"] == 2

    # The nightly flow continues the oracle arm from its own copy: round 0 found in the cache, not fine-tuned again.
    from flows.self_improve import nightly

    before = runs["oracle"].model(0).stat().st_mtime_ns
    nightly(run_name="exp-oracle-s0", runs_dir=str(cfg.runs_dir), rounds=1)
    assert runs["oracle"].round_manifest(2).is_file() and runs["oracle"].model(0).stat().st_mtime_ns == before
    ran = _task_runs("exp-self-s0", "exp-oracle-s0")
    assert ran["finetune-r0"] == 1 and ran["finetune-r0-adopted"] == 1 and ran["retrain-r2"] == 1


def _task_runs(*flow_runs: str) -> dict[str, int]:
    """How many task runs of each name ran (not answered from the cache) in the flow runs named ``flow_runs``."""
    from collections import Counter

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=list(flow_runs))))
    return dict(Counter(r.name for r in runs if r.state is not None and r.state.name == "Completed"))


def test_a_run_adopts_round_0_only_from_a_run_with_its_seed_data_and_fine_tune(tmp_path):
    from selffeed.loop.rounds import run_rounds, shared_round0

    cfg = tiny_run_config(tmp_path, **{"loop.max_rounds": 1, "name": "src"})
    with pytest.raises(ConfigError, match="round0_from: run 'src' has no committed round 0"):
        shared_round0(cfg.model_copy(update={"name": "dst"}), "src")
    run_rounds(cfg)
    same = cfg.model_copy(update={"name": "dst"}, deep=True)
    model, measured = shared_round0(same, "src")
    assert model.path("model") == RunLayout.of(cfg.runs_dir, "src").model(0)
    assert measured == json.loads(RunLayout.of(cfg.runs_dir, "src").metrics(0).read_text())
    other = same.model_copy(update={"seed": 7}, deep=True)
    with pytest.raises(ConfigError, match=r"round0_from: run 'src' was prepared or fine-tuned .*\(seed differ\)"):
        shared_round0(other, "src")
    other = same.model_copy(deep=True)
    other.finetune.lr = other.finetune.lr * 2
    with pytest.raises(ConfigError, match=r"\(finetune differ\)"):
        shared_round0(other, "src")
    other = same.model_copy(deep=True)
    other.loop.mix = "seed_only"  # a setting round 0 does not read
    assert shared_round0(other, "src")[0] == model


def test_arms_of_a_seed_share_round_0_validation_where_its_inputs_are_the_same(tmp_path):
    from selffeed.loop.rounds import run_experiment
    from selffeed.run.keys import same_validation

    cfg = tiny_run_config(tmp_path, **{"loop.max_rounds": 1, "name": "share"})
    run_experiment(cfg, ["self", "seed_only"], seeds=1)
    lays = [RunLayout.of(cfg.runs_dir, ex.arm_config(cfg, arm, 0).name) for arm in ("self", "seed_only")]
    first, second = (json.loads(lay.metrics(0).read_text()) for lay in lays)
    assert second["model_id"] == "share-seed_only-s0/round-000" and first["model_id"] == "share-self-s0/round-000"
    assert {**first, "model_id": None} == {**second, "model_id": None}
    validated = json.loads(lays[1].round_manifest(0).read_text())["stages"]["validate"]["meta"]
    assert validated["measured_by"] == "share-self-s0/round-000"
    assert "measured_by" not in json.loads(lays[0].round_manifest(0).read_text())["stages"]["validate"]["meta"]
    assert json.loads(lays[1].metrics(1).read_text())["round"] == 1  # the arm went on to its own round 1
    # Greedy validation reads no sampling settings; a recipe whose validation samples does, and a seed always.
    assert same_validation(ex.arm_config(cfg, "self", 0), ex.arm_config(cfg, "oracle", 0))
    assert not same_validation(ex.arm_config(cfg, "self", 0), ex.arm_config(cfg, "self", 1))
    text = load_config("data/configs/text.yaml", [f"runs_dir={tmp_path}"])
    assert not same_validation(ex.arm_config(text, "self", 0), ex.arm_config(text, "unfiltered", 0))
