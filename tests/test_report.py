"""The ablation report's statistics: pooled cases, bootstrap intervals, noise verdicts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from xtfclip_lib.report import (StudyResult, bootstrap_ci, collect_studies, delta_table, headline_table,
                                per_query_values, setting_name, verdict_table, write_report,
                                seed_spread, summarise, with_overall)


def _arrays(rng, n, p_hit, ap_shift=0.0):
    first = np.where(rng.random(n) < p_hit, 1, rng.integers(2, 30, n))
    ap = np.clip(rng.random(n) * 0.3 + (first == 1) * 0.6 + ap_shift, 0, 1)
    return {"first_rank": first, "ap": ap, "inp": ap * 0.8}


def _study(name, p_hit, seeds, kind="baseline", seed0=0):
    results = {}
    for s in range(seeds):
        rng = np.random.default_rng(seed0 + 100 * s)
        results[s] = {"aerial_to_ground": _arrays(rng, 200, p_hit), "ground_to_aerial": _arrays(rng, 150, p_hit)}
    return StudyResult(name, kind, None if kind == "baseline" else name, results)


def test_per_query_values_give_the_metrics():
    arrays = {"first_rank": np.array([1, 3, 7, 12]), "ap": np.array([1.0, 0.5, 0.2, 0.1]),
              "inp": np.array([1.0, 0.3, 0.1, 0.05])}
    assert per_query_values(arrays, "R1").mean() == 0.25
    assert per_query_values(arrays, "R5").mean() == 0.5
    assert per_query_values(arrays, "R10").mean() == 0.75
    assert per_query_values(arrays, "mAP").mean() == pytest.approx(0.45)
    with pytest.raises(KeyError, match="R2"):
        per_query_values(arrays, "R2")


def test_overall_pools_queries_not_case_means():
    per_case = {"aerial_to_ground": {"first_rank": np.array([1, 1, 1]), "ap": np.ones(3), "inp": np.ones(3)},
                "ground_to_aerial": {"first_rank": np.array([5]), "ap": np.zeros(1), "inp": np.zeros(1)}}
    overall = with_overall(per_case)["overall"]
    assert per_query_values(overall, "R1").mean() == 0.75  # not (1 + 0) / 2


def test_bootstrap_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(50), rng.random(5000)
    lo, hi = bootstrap_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_ci(large)
    assert hi2 - lo2 < (hi - lo) / 5
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))


def test_seed_spread_uses_only_multi_seed_studies():
    single = _study("a", 0.5, 1)
    assert math.isnan(seed_spread([single], "overall", "R1"))
    multi = _study("b", 0.5, 3)
    values = multi.seed_values("overall", "R1")
    assert seed_spread([single, multi], "overall", "R1") == pytest.approx(values.std(ddof=1))


def test_summary_flags_a_large_effect_and_not_noise():
    tf = _study("tf_clip", 0.3, 2, seed0=0)
    x = _study("x_tfclip", 0.7, 2, seed0=7)
    same = _study("loo_a", 0.7, 1, kind="leave_one_out", seed0=7)   # same data as x_tfclip seed 0
    summary = summarise([tf, x, same], num_bootstrap=200)
    r1 = summary[(summary.metric == "R1") & (summary.case == "overall")].set_index("study")
    assert r1.loc["x_tfclip", "exceeds_noise_vs_tf_clip"]
    assert not r1.loc["loo_a", "exceeds_noise_vs_x_tfclip"]
    assert not r1.loc["x_tfclip", "exceeds_noise_vs_x_tfclip"]
    assert r1.loc["x_tfclip", "num_seeds"] == 2 and r1.loc["loo_a", "num_seeds"] == 1
    assert ((summary.ci_lo <= summary["mean"] + 1e-9) | (summary.num_seeds > 1)).all()
    table = headline_table(summary)
    assert list(table.index) == ["tf_clip", "x_tfclip", "loo_a"] and "±" in table.loc["x_tfclip", "R1"]
    deltas = delta_table(summary, "tf_clip")
    assert set(deltas.study) == {"x_tfclip", "loo_a"} and len(deltas) == 2 * 3


def test_summary_needs_the_references():
    with pytest.raises(KeyError, match="x_tfclip"):
        summarise([_study("tf_clip", 0.3, 2)])


def test_write_report_states_its_context_and_writes_every_file(tmp_path):
    tf = _study("tf_clip", 0.3, 2, seed0=0)
    x = _study("x_tfclip", 0.7, 2, seed0=7)
    loo = _study("loo_attention_pooling", 0.69, 1, kind="leave_one_out", seed0=7)
    summary = summarise([tf, x, loo], num_bootstrap=100)
    paths = write_report(summary, tmp_path / "report",
                         {"dataset": "synthetic aerial-ground set (180 ids)", "seeds": 1})
    for key in ("md", "csv", "html", "png_R1", "png_mAP"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    text = paths["md"].read_text()
    assert "not taken from the X-TFCLIP paper" in text and "synthetic aerial-ground set" in text
    assert "| loo_attention_pooling | x_tfclip |" in text and "within noise" in text
    assert paths["png_R1"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdicts = verdict_table(summary)
    assert list(verdicts.study) == ["loo_attention_pooling"]
    assert verdicts.compared_with.iloc[0] == "x_tfclip"


def test_collect_studies_reads_finished_seeds_only(tmp_path):
    from xtfclip_lib.workbook import plan_studies
    study = plan_studies()[1]   # x_tfclip
    for seed, done in ((0, True), (1, False)):
        folder = tmp_path / "studies" / "x_tfclip" / f"seed{seed}" / "per_query"
        folder.mkdir(parents=True)
        arrays = {f"{c}__{k}": np.arange(3.0) + 1 for c in ("aerial_to_ground", "ground_to_aerial")
                  for k in ("ap", "inp", "first_rank")}
        np.savez(folder / f"{setting_name(study.test_time)}.npz", **arrays)
        if done:
            (folder.parent / "done.json").write_text("{}")
    [result] = collect_studies(tmp_path, [study])
    assert list(result.results) == [0]
    np.testing.assert_array_equal(result.results[0]["aerial_to_ground"]["first_rank"], [1, 2, 3])
    with pytest.raises(FileNotFoundError, match="tf_clip"):
        collect_studies(tmp_path, [plan_studies()[0]])
