"""The ablation report's statistics: pooled cases, bootstrap intervals, noise verdicts."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from xtfclip_lib.config import load_config, save_config
from xtfclip_lib.workbook.report import (StudyResult, bootstrap_ci, collect_studies, delta_table, headline_table,
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
    from xtfclip_lib.workbook.plan import plan_studies
    study = plan_studies()[1]   # x_tfclip
    for seed, done in ((0, True), (1, False)):
        folder = tmp_path / "studies" / "x_tfclip" / f"seed{seed}" / "per_query"
        folder.mkdir(parents=True)
        arrays = {f"{c}__{k}": np.arange(3.0) + 1 for c in ("aerial_to_ground", "ground_to_aerial")
                  for k in ("ap", "inp", "first_rank")}
        np.savez(folder / f"{setting_name(study.test_time)}.npz", **arrays)
        save_config(load_config("quick", "x_tfclip", [f"train.seed={seed}"]), folder.parent / "config.yaml")
        if done:
            (folder.parent / "done.json").write_text("{}")
    [result] = collect_studies(tmp_path, [study])
    assert list(result.results) == [0]
    np.testing.assert_array_equal(result.results[0]["aerial_to_ground"]["first_rank"], [1, 2, 3])
    with pytest.raises(FileNotFoundError, match="tf_clip"):
        collect_studies(tmp_path, [plan_studies()[0]])


def _finished(root, run, seed, *overrides, preset="quick"):
    """A finished model folder of the workbook: its config.yaml, done.json and per-query arrays."""
    from xtfclip_lib.workbook.plan import plan_studies

    [variant] = {s.run.variant for s in plan_studies() if s.run.name == run}
    train_overrides = next(s.run.overrides for s in plan_studies() if s.run.name == run)
    folder = root / "studies" / run / f"seed{seed}"
    (folder / "per_query").mkdir(parents=True)
    cfg = load_config(preset, variant, [*overrides, *train_overrides, f"train.seed={seed}"])
    save_config(cfg, folder / "config.yaml")
    (folder / "done.json").write_text('{"overrides": []}')
    rng = np.random.default_rng(seed)
    arrays = {f"{c}__{k}": rng.random(5) + (k == "first_rank") for c in ("aerial_to_ground", "ground_to_aerial")
              for k in ("ap", "inp", "first_rank")}
    for name in ("mask1_flip1", "mask0_flip1", "mask1_flip0", "mask0_flip0"):
        np.savez(folder / "per_query" / f"{name}.npz", **arrays)
    return cfg


def test_the_report_context_comes_from_the_studies_configs(tmp_path, caplog):
    from xtfclip_lib.workbook.context import report_context

    for seed in range(2):
        _finished(tmp_path, "x_tfclip", seed, "train.epochs=4", "features.flip_tta=false")
    _finished(tmp_path, "tf_clip", 0, "train.epochs=4", "features.flip_tta=false")
    with caplog.at_level("WARNING"):
        context = report_context("tiny", [], tmp_path)      # what the notebook was asked: not the studies
    assert context["preset"].startswith("quick (4 epochs, input 64x32, T=2")
    assert context["overrides"] == "features.flip_tta=false, train.epochs=4"
    assert context["seeds"] == "x_tfclip: 2 seeds; tf_clip: 1 seed"
    assert "describes the studies as trained, not the preset 'tiny'" in caplog.text
    caplog.clear()
    report_context("quick", ["train.epochs=4", "features.flip_tta=false"], tmp_path)
    assert "describes the studies" not in caplog.text


def test_studies_of_other_settings_are_never_mixed(tmp_path):
    from xtfclip_lib.workbook.plan import plan_studies

    studies = [s for s in plan_studies() if s.run.name in ("tf_clip", "x_tfclip", "loo_attention_pooling",
                                                           "aoi_attention_pooling")]
    for run in ("x_tfclip", "tf_clip", "loo_attention_pooling", "aoi_attention_pooling"):
        _finished(tmp_path, run, 0, "train.epochs=8")
    _finished(tmp_path, "x_tfclip", 1, "train.epochs=8")
    assert len(collect_studies(tmp_path, studies)) == len(studies)   # they differ only in their switch

    stale = _finished(tmp_path / "b", "loo_attention_pooling", 0, "train.epochs=4")
    for run in ("x_tfclip", "tf_clip", "aoi_attention_pooling"):
        _finished(tmp_path / "b", run, 0, "train.epochs=8")
    assert not stale.features.attention_pooling
    with pytest.raises(ValueError, match=r"studies x_tfclip \(seed0\) and loo_attention_pooling \(seed0\) "
                                         r"were trained with other settings than their ablated switch: "
                                         r"train.epochs: 8 -> 4; rerun"):
        collect_studies(tmp_path / "b", studies)

    _finished(tmp_path / "c", "x_tfclip", 0)
    _finished(tmp_path / "c", "x_tfclip", 1, "train.base_lr=0.5")
    _finished(tmp_path / "c", "tf_clip", 0, "data.root=elsewhere")
    with pytest.raises(ValueError, match=r"x_tfclip \(seed0\) and tf_clip \(seed0\) .*data.root"):
        collect_studies(tmp_path / "c", plan_studies()[:1])
    with pytest.raises(ValueError, match=r"x_tfclip \(seed0\) and x_tfclip \(seed1\) .*train.base_lr"):
        collect_studies(tmp_path / "c", plan_studies()[1:2])


def test_seed_counts_are_grouped_in_words():
    from xtfclip_lib.workbook.context import seed_counts

    many = {f"loo_{i}": 1 for i in range(14)} | {"tf_clip": 3, "x_tfclip": 3}
    assert seed_counts(many) == "tf_clip and x_tfclip: 3 seeds each; the other 14 trained models: 1 seed each"
    assert seed_counts({"a": 2, "b": 2, "c": 2, "d": 2}) == "all 4 trained models: 2 seeds each"
    assert seed_counts({}) == "none"


def _fake_study(root, variant, seed, r1, acc, platform):
    """A finished study folder as `workbook.run_study` leaves it, with chosen numbers."""
    folder = root / "studies" / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "done.json").write_text("{}")
    flip = variant == "x_tfclip"
    (folder / "config.yaml").write_text(f"features:\n  flip_tta: {str(flip).lower()}\n")
    rows = []
    for (model, mask), value in r1.items():
        for case, offset in (("aerial_to_ground", -0.01), ("ground_to_aerial", 0.01), ("overall", 0.0)):
            rows.append({"case": case, "R1": value + offset, "mAP": value, "model": model,
                         "soft_biometric_mask": mask, "flip_tta": flip})
    rows.append({"case": "overall", "R1": 0.99, "mAP": 0.99, "model": "trained",
                 "soft_biometric_mask": True, "flip_tta": not flip})   # another flip: ignored
    pd.DataFrame(rows).to_csv(folder / "study_metrics.csv", index=False)
    pd.DataFrame({"epoch": [1, 2], "acc_img": [0.1, acc]}).to_csv(folder / "metrics.csv", index=False)
    pd.DataFrame({"case": ["aerial_to_ground", "ground_to_ground"], "R1": platform}).to_csv(
        folder / "platform_metrics.csv", index=False)


def test_calibration_table_and_checks(tmp_path):
    from xtfclip_lib.workbook.calibration import calibration_checks, calibration_table

    good_x = {("trained", True): 0.6, ("untrained", True): 0.25, ("trained", False): 0.3, ("untrained", False): 0.1}
    good_t = {("trained", True): 0.5, ("untrained", True): 0.2, ("trained", False): 0.2, ("untrained", False): 0.05}
    for seed, shift in ((0, 0.0), (1, 0.02)):
        _fake_study(tmp_path, "x_tfclip", seed, {k: v + shift for k, v in good_x.items()}, 0.3, [0.2, 0.4])
        _fake_study(tmp_path, "tf_clip", seed, {k: v + shift for k, v in good_t.items()}, 0.6 + shift, [0.2, 0.3])
    table = calibration_table(tmp_path)
    row = table[(table.variant == "x_tfclip") & (table.model == "trained") & table["mask"]
                & (table.case == "overall")].iloc[0]
    assert row.R1 == pytest.approx(0.61) and row.num_seeds == 2          # mean of 0.60 and 0.62
    checks = calibration_checks(tmp_path).set_index("target")
    assert checks.ok.all(), checks
    assert checks.loc["tf_clip training ID accuracy (acc_img), last epoch", "value"] == pytest.approx(0.61)
    gap = checks.loc["x_tfclip ground-to-ground minus aerial-to-ground R1 (no mask)", "value"]
    assert gap == pytest.approx(0.2)

    # an untrained model that is too good, and a too-low training accuracy, fail their targets
    bad = tmp_path / "bad"
    _fake_study(bad, "x_tfclip", 0, {**good_x, ("untrained", True): 0.4, ("untrained", False): 0.2}, 0.3, [0.3, 0.31])
    _fake_study(bad, "tf_clip", 0, good_t, 0.3, [0.2, 0.3])
    failed = calibration_checks(bad).set_index("target").ok
    assert not failed["untrained x_tfclip R1, aerial_to_ground (at most half of trained)"]
    assert not failed["x_tfclip without the mask, trained R1 overall"]
    assert not failed["tf_clip training ID accuracy (acc_img), last epoch"]
    assert not failed["x_tfclip ground-to-ground minus aerial-to-ground R1 (no mask)"]
    assert failed["tf_clip without the mask, trained R1 overall"]
    with pytest.raises(FileNotFoundError, match="finished x_tfclip studies"):
        calibration_table(tmp_path / "empty")


def test_verdicts_are_decided_on_the_numbers_as_printed():
    from xtfclip_lib.workbook.report import as_printed, exceeds_noise

    assert as_printed(0.01149) == 1.1 and as_printed(-0.0004) == 0.0
    assert not exceeds_noise(0.0114, 0.0106, 0.002, 0.02)     # "+1.1" against "±1.1": within noise
    assert exceeds_noise(0.0116, 0.0106, 0.002, 0.02)         # "+1.2" against "±1.1"
    assert not exceeds_noise(0.03, 0.01, 0.0004, 0.05)        # interval printed "[+0.0, +5.0]"
    assert exceeds_noise(-0.03, 0.01, -0.05, -0.0006)         # "[-5.0, -0.1]" excludes zero
    assert not exceeds_noise(0.05, math.nan, 0.01, 0.09)      # no seed spread: nothing exceeds


def _report(tmp_path):
    tf = _study("tf_clip", 0.3, 2, seed0=0)
    x = _study("x_tfclip", 0.7, 2, seed0=7)
    loo = _study("loo_attention_pooling", 0.69, 1, kind="leave_one_out", seed0=7)
    big = _study("aoi_attention_pooling", 0.6, 1, kind="add_one_in", seed0=3)
    summary = summarise([tf, x, loo, big], num_bootstrap=100)
    return write_report(summary, tmp_path / "report", {"dataset": "synthetic set", "seeds": "x_tfclip: 2 seeds"})


def test_html_report_is_rendered_markdown_in_percent_with_the_noise_rule(tmp_path):
    paths = _report(tmp_path)
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and page.count("<table>") == 4
    assert "**" not in page and "| ---" not in page and "|---" not in page     # no literal markdown
    assert "<strong>What these numbers are.</strong>" in page
    assert "Noise rule: a difference <em>exceeds noise</em> only if" in page
    assert "largest first: aoi_attention_pooling (+" in page
    assert "a <strong>positive</strong> leave-one-out delta means removing the switch <em>helps</em>" in page
    assert "filled marker" in page and '<img alt="mAP" src="ablation_mAP.png"' in page
    verdicts = page[page.index("<th>compared_with</th>"):]
    verdicts = verdicts[:verdicts.index("</table>")]
    assert "±" in verdicts and not re.search(r"\b0\.\d{3,}", verdicts)        # percent, not fractions
    md = paths["md"].read_text()
    assert "Noise rule:" in md and "largest first" in md and "removing the switch *helps*" in md


def test_each_printed_verdict_agrees_with_its_printed_numbers(tmp_path):
    md = _report(tmp_path)["md"].read_text()
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| loo_") or line.startswith("| aoi_")]
    rows = [r for r in rows if len(r) == 6 and r[1] in ("x_tfclip", "tf_clip")]   # the verdict table
    assert {r[0] for r in rows} == {"| loo_attention_pooling", "| aoi_attention_pooling"}
    for _, _, delta, ci, noise, verdict in rows:
        lo, hi = (float(v) for v in ci.strip("[]").split(", "))
        agrees = abs(float(delta)) > float(noise.lstrip("±")) and (lo > 0 or hi < 0)
        assert verdict.rstrip(" |") == ("exceeds noise" if agrees else "within noise")
    assert any("exceeds noise" in r[-1] for r in rows) and any("within noise" in r[-1] for r in rows)


def test_ablation_plot_draws_noise_exceeding_studies_filled(tmp_path):
    from xtfclip_lib.workbook import plots

    frame = pd.DataFrame({"study": ["tf_clip", "x_tfclip", "loo_a"], "case": "overall", "metric": "mAP",
                          "mean": [0.2, 0.5, 0.45], "lo": [0.18, 0.47, 0.43], "hi": [0.22, 0.53, 0.47],
                          "exceeds": [True, True, False]})
    fig = plots.ablation_plot(frame)
    ax = fig.axes[0]
    faces = [c.get_facecolors() for c in ax.collections if len(c.get_offsets())]
    white = [f for f in faces if len(f) and np.allclose(f[:, :3], 1.0)]
    assert len(white) == 1 and len(white[0]) == 1                      # loo_a hollow, the rest filled
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "exceeds noise" in labels and "within noise" in labels
    plain = plots.ablation_plot(frame.drop(columns=["exceeds"]))
    assert "within noise" not in [t.get_text() for t in plain.axes[0].get_legend().get_texts()]
