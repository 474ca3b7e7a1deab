"""Every figure of `xtfclip_lib.workbook.plots` on tiny inputs: axes and artists as documented, PNGs written."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from xtfclip_lib.workbook import plots
from xtfclip_lib.data.attributes import ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.data.dataset import Tracklet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as image:
        assert image.width > 50 and image.height > 50


def write_tracklet(root, pid: int, camid: int, num_frames: int, size_hw: tuple[int, int],
                   seed: int) -> Tracklet:
    """`num_frames` random JPEGs in root/<pid>/<name>/ and the Tracklet pointing at them."""
    rng = np.random.default_rng(seed)
    name = f"{pid:04d}_C{camid}_T000"
    folder = root / f"{pid:04d}" / name
    folder.mkdir(parents=True)
    frames = []
    for f in range(num_frames):
        path = folder / f"{name}_F{f:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8)).save(path)
        frames.append(str(path))
    return Tracklet(name=name, frames=tuple(frames), pid=pid, camid=camid,
                    platform="aerial" if camid >= 4 else "ground")


@pytest.fixture
def tracklets(tmp_path):
    """Three identities; ground tracklets 48x24, aerial 20x16 (smaller, as in the data)."""
    out = []
    for pid in (1, 2, 3):
        out.append(write_tracklet(tmp_path, pid, 0, 5, (48, 24), seed=pid))
        out.append(write_tracklet(tmp_path, pid, 4, 3, (20, 16), seed=10 + pid))
    return out


@pytest.fixture
def case(tracklets):
    """Aerial queries vs ground gallery with hand-set distances: query 0 right, query 1 wrong."""
    query = [t for t in tracklets if t.platform == "aerial"]
    gallery = [t for t in tracklets if t.platform == "ground"]
    distmat = np.array([[0.1, 0.5, 0.9],    # pid 1 -> gallery pid 1 first (match)
                        [0.2, 0.7, 0.4],    # pid 2 -> pid 1 first (wrong), its match is last
                        [0.3, 0.3, 0.2]])   # pid 3 -> pid 3 first
    return plots.RetrievalResult.from_tracklets("case1", query, gallery, distmat)


def test_frame_strip_concatenates_evenly_spaced_frames_at_one_height(tracklets):
    strip = plots.frame_strip(tracklets[0].frames, num_frames=3, height_px=32)
    # 3 frames of aspect 24/48 at height 32 -> width 16 each, plus 2 gaps
    assert strip.shape == (32, 3 * 16 + 2 * plots.STRIP_GAP_PX, 3)
    assert strip.dtype == np.uint8
    assert list(plots.evenly_spaced(5, 3)) == [0, 2, 4]
    assert list(plots.evenly_spaced(2, 4)) == [0, 1]


def test_load_frame_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        plots.load_frame(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        plots.load_frame(bad)


def test_tracklet_length_histogram_one_panel_per_split(tmp_path):
    lengths = pd.DataFrame({"split": ["train"] * 4 + ["case1_query"] * 2,
                            "platform": ["ground", "aerial", "ground", "aerial", "aerial", "aerial"],
                            "num_frames": [8, 12, 30, 64, 10, 20]})
    path = tmp_path / "figs" / "lengths.png"
    fig = plots.tracklet_length_histogram(lengths, path=path)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["train", "case1_query"]
    assert len(fig.axes[0].patches) == 2 * 15  # ground and aerial histograms, 15 bins each
    assert len(fig.axes[1].patches) == 15      # aerial only
    assert_png(path)
    with pytest.raises(KeyError, match="num_frames"):
        plots.tracklet_length_histogram(lengths.drop(columns="num_frames"))


def test_attribute_grid_fifteen_panels_with_unknown_hatched(tmp_path):
    rows = [{"split": split, "attribute": a, "code": c, "fraction": 1 / (UNKNOWN_CODE[a] + 1),
             "unknown": c == UNKNOWN_CODE[a]}
            for split in ("train", "case1") for a in ATTRIBUTES for c in range(UNKNOWN_CODE[a] + 1)]
    path = tmp_path / "attributes.png"
    fig = plots.attribute_grid(pd.DataFrame(rows), path=path)
    assert [ax.get_title() for ax in fig.axes] == list(ATTRIBUTES)
    gender = fig.axes[0]
    assert len(gender.patches) == 2 * (UNKNOWN_CODE["gender"] + 1)
    hatched = [p.get_hatch() for p in gender.patches]
    assert hatched.count("///") == 2  # the unknown code, once per split
    assert_png(path)


def test_identity_montage_one_row_per_tracklet(tracklets, tmp_path):
    path = tmp_path / "montage.png"
    chosen = [t for t in tracklets if t.pid == 1]
    fig = plots.identity_montage(chosen, num_frames=4, path=path, title="id 1")
    assert len(fig.axes) == 2
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert fig.axes[0].get_ylabel().startswith("C0 ground") and "24x48 px" in fig.axes[0].get_ylabel()
    assert fig.axes[1].get_ylabel().startswith("C4 aerial") and "16x20 px" in fig.axes[1].get_ylabel()
    assert_png(path)
    pairs = plots.identity_montage([("custom", chosen[0].frames)])
    assert pairs.axes[0].get_ylabel() == "custom"
    with pytest.raises(ValueError, match="no tracklets"):
        plots.identity_montage([])


def test_training_curves_three_panels_skip_missing_epochs(tmp_path):
    """Columns as the engine's metrics.csv writes them (Criterion terms, lr, val_<metric>)."""
    metrics = pd.DataFrame({"epoch": [1, 2, 3, 4], "lr": [1e-5, 1e-4, 1e-4, 1e-5],
                            "selection": ["val"] * 4, "loss": [3.0, 2.0, 1.5, 1.2],
                            "id_img": [1.0, 0.8, 0.6, 0.5], "triplet_tmd": [0.5, 0.4, 0.3, 0.2],
                            "acc_img": [0.1, 0.2, 0.3, 0.4], "epoch_s": [5.0, 5.1, 5.0, 4.9],
                            "val_R1": [np.nan, 0.3, np.nan, 0.5], "val_mAP": [np.nan, 0.2, np.nan, 0.4]})
    path = tmp_path / "curves.png"
    fig = plots.training_curves(metrics, path=path)
    ax_loss, ax_lr, ax_val = fig.axes
    assert [line.get_label() for line in ax_loss.lines] == ["loss", "id_img", "triplet_tmd"]
    assert len(ax_lr.lines) == 1 and ax_lr.get_yscale() == "log"
    assert [line.get_label() for line in ax_val.lines] == ["val_R1", "val_mAP"]
    assert list(ax_val.lines[0].get_xdata()) == [2.0, 4.0]  # validation epochs only
    assert "val" in ax_val.get_title()
    assert_png(path)
    with pytest.raises(KeyError, match="loss_total"):
        plots.training_curves(metrics, loss_columns=["loss_total"])


def test_cmc_curves_panels_per_case_lines_per_model(tmp_path):
    cmc = np.linspace(0.4, 1.0, 50)
    path = tmp_path / "cmc.png"
    fig = plots.cmc_curves({"case1": {"tf_clip": cmc * 0.8, "x_tfclip": cmc},
                            "case2": {"x_tfclip": cmc}}, path=path, max_rank=20)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1
    assert len(fig.axes[0].lines[1].get_xdata()) == 20
    assert_png(path)
    flat = plots.cmc_curves({"x_tfclip": cmc[:5]}, max_rank=20)
    assert len(flat.axes) == 1 and len(flat.axes[0].lines[0].get_xdata()) == 5


def test_retrieval_case_top_k_follows_protocol(case):
    order, matches = case.top_k(1, 3)
    assert list(order) == [0, 2, 1] and list(matches) == [False, False, True]
    # a gallery item with the query's pid and camera is dropped (METHOD §5)
    same_camera = plots.RetrievalResult("c", [[0.0, 0.5]], [7], [7, 8], [4], [4, 1],
                                      [["q"]], [["a"], ["b"]])
    assert list(same_camera.top_k(0, 2)[0]) == [1]
    # ties keep gallery order
    ties = plots.RetrievalResult("c", [[0.2, 0.2, 0.1]], [1], [1, 2, 3], [4], [0, 0, 0],
                               [["q"]], [["a"], ["b"], ["c"]])
    assert list(ties.top_k(0, 3)[0]) == [2, 0, 1]
    with pytest.raises(ValueError, match="g_pids"):
        plots.RetrievalResult("c", np.zeros((1, 2)), [1], [1], [0], [0, 1], [["q"]], [["a"], ["b"]])
    with pytest.raises(IndexError, match="query index 5"):
        case.top_k(5, 1)


def test_rank1_correct_matches_top_k_on_random_cases():
    rng = np.random.default_rng(0)
    distmat = rng.integers(0, 4, size=(40, 25)).astype(float)  # many ties
    q_pids, g_pids = rng.integers(0, 6, 40), rng.integers(0, 6, 25)
    q_camids, g_camids = rng.integers(0, 3, 40), rng.integers(0, 3, 25)
    result = plots.RetrievalResult("r", distmat, q_pids, g_pids, q_camids, g_camids,
                                   [["q"]] * 40, [["g"]] * 25)
    expected = [bool(result.top_k(q, 1)[1][:1].any()) for q in range(40)]
    assert list(result.rank1_correct(chunk_rows=7)) == expected


def test_select_queries_mixes_hits_and_misses(case):
    picks = plots.select_queries(case, 2, seed=0)
    hits = [bool(case.top_k(q, 1)[1][0]) for q in picks]
    assert sorted(hits) == [False, True]
    assert plots.select_queries(case, 10) == [0, 1, 2]  # capped at the number of queries


def test_ranked_gallery_frames_matches_green_and_misses_red(case, tmp_path):
    path = tmp_path / "ranked.png"
    fig = plots.ranked_gallery(case, [0, 1], top_k=2, frames_per_strip=2, path=path)
    assert len(fig.axes) == 2 * 3
    assert all(len(ax.images) == 1 for ax in fig.axes)
    edge = lambda ax: ax.spines["top"].get_edgecolor()  # noqa: E731
    green, red = to_rgba(plots.MATCH_COLOR), to_rgba(plots.MISMATCH_COLOR)
    assert edge(fig.axes[1]) == green and edge(fig.axes[2]) == red      # query 0: right, wrong
    assert edge(fig.axes[4]) == red and edge(fig.axes[5]) == red        # query 1: wrong, wrong
    assert "d=0.100" in fig.axes[1].get_title()
    assert_png(path)
    short = plots.ranked_gallery(case, [0], top_k=5)  # gallery of 3: two hidden slots
    assert sum(not ax.get_visible() for ax in short.axes) == 2


def test_embed_2d_pca_matches_svd_and_tsne_runs():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1])
    coords = plots.embed_2d(features, "pca")
    assert coords.shape == (30, 2)
    # PCA coordinates are uncorrelated, first axis carries more variance
    assert abs(np.corrcoef(coords.T)[0, 1]) < 1e-8
    assert coords[:, 0].var() > coords[:, 1].var()
    # deterministic signs: a shift changes nothing, negating the data negates the coordinates
    np.testing.assert_allclose(plots.embed_2d(features + 3, "pca"), coords, atol=1e-8)
    np.testing.assert_allclose(plots.embed_2d(-features, "pca"), -coords, atol=1e-8)
    assert plots.embed_2d(features, "tsne", seed=0).shape == (30, 2)
    with pytest.raises(ValueError, match="umap"):
        plots.embed_2d(features, "umap")


def test_embedding_plot_colour_by_identity_marker_by_platform(tmp_path):
    rng = np.random.default_rng(1)
    pids = np.repeat([1, 2, 3], 4)
    platforms = np.tile(["ground", "ground", "aerial", "aerial"], 3)
    path = tmp_path / "embedding.png"
    fig = plots.embedding_plot(rng.normal(size=(12, 6)), pids, platforms, path=path)
    (ax,) = fig.axes
    assert len(ax.collections) == 2  # one scatter per platform
    sizes = sorted(len(c.get_offsets()) for c in ax.collections)
    assert sizes == [6, 6]
    colours = {tuple(c) for coll in ax.collections for c in coll.get_facecolors()}
    assert len(colours) == 3  # one colour per identity
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ground", "aerial"]
    assert_png(path)
    subset = plots.embedding_plot(rng.normal(size=(12, 6)), pids, platforms, max_ids=2, seed=3)
    assert sum(len(c.get_offsets()) for c in subset.axes[0].collections) == 8
    with pytest.raises(ValueError, match="drone"):
        plots.embedding_plot(rng.normal(size=(2, 3)), [1, 2], ["ground", "drone"])


@pytest.fixture
def summary():
    rows = []
    for study, base in (("tf_clip", 0.4), ("x_tfclip", 0.6), ("loo_attention_pooling", 0.55)):
        for case_name in ("case1", "case2"):
            for metric in ("R1", "mAP"):
                rows.append({"study": study, "case": case_name, "metric": metric, "mean": base,
                             "lo": base - 0.05, "hi": base + 0.04, "std": 0.02})
    return pd.DataFrame(rows)


def test_ablation_forest_plot_panels_and_error_bars(summary, tmp_path):
    path = tmp_path / "ablation.png"
    fig = plots.ablation_plot(summary, path=path)
    assert len(fig.axes) == 2 * 2  # metrics x cases
    ax = fig.axes[0]
    assert ax.get_title() == "case1 · R1"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["tf_clip", "x_tfclip",
                                                            "loo_attention_pooling"]
    # error bar segments span lo..hi
    segments = ax.collections[0].get_segments()
    np.testing.assert_allclose(sorted(s[0][0] for s in segments), [0.35, 0.5, 0.55])
    np.testing.assert_allclose(sorted(s[1][0] for s in segments), [0.44, 0.59, 0.64])
    references = [line for line in ax.lines if line.get_linestyle() in ("--", ":")]
    assert [line.get_xdata()[0] for line in references] == [0.4, 0.6]  # tf_clip, x_tfclip
    assert_png(path)


def test_ablation_bar_plot_with_std_and_bad_inputs(summary):
    fig = plots.ablation_plot(summary.drop(columns=["lo", "hi"]), metrics=["mAP"], kind="bar")
    assert len(fig.axes) == 2
    assert len(fig.axes[0].patches) == 3
    with pytest.raises(KeyError, match="'lo' and 'hi' or 'std'"):
        plots.ablation_plot(summary.drop(columns=["lo", "hi", "std"]))
    with pytest.raises(KeyError, match="R20"):
        plots.ablation_plot(summary, metrics=["R20"])
    with pytest.raises(ValueError, match="violin"):
        plots.ablation_plot(summary, kind="violin")


def test_query_browser_static_headless_and_widget(case, tmp_path):
    path = tmp_path / "browser.png"
    fig = plots.query_browser({"case1": case, "case2": case}, top_k=2, interactive=False,
                              static_queries=2, path=path)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 2 * 3  # 2 cases x 2 queries x (query + top 2)
    assert_png(path)
    widget = plots.query_browser({"case1": case}, top_k=2, interactive=True)
    case_box, slider = widget.children[0].children
    assert case_box.options == ("case1",) and slider.max == case.num_queries - 1
    slider.value = 2  # redraws without error


def test_retrieval_results_and_cmc_from_results(tracklets):
    lists = {"q": [t for t in tracklets if t.platform == "aerial"],
             "g": [t for t in tracklets if t.platform == "ground"]}
    cases = [types.SimpleNamespace(name="aerial_to_ground", query="q", gallery="g")]
    distmat = np.array([[0.1, 0.5, 0.9], [0.2, 0.7, 0.4], [0.3, 0.3, 0.2]])
    results = plots.retrieval_results(lists, cases, {"aerial_to_ground": distmat})
    result = results["aerial_to_ground"]
    assert list(result.q_pids) == [1, 2, 3] and list(result.g_camids) == [0, 0, 0]
    assert result.query_frames[0] == lists["q"][0].frames
    # query 1 finds its match at rank 3, the others at rank 1
    np.testing.assert_allclose(result.evaluate(max_rank=3)["cmc"], [2 / 3, 2 / 3, 1.0])
    fig = plots.cmc_curves({"aerial_to_ground": {"model": result}}, max_rank=3)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [2 / 3, 2 / 3, 1.0])


def test_pretraining_summary_draws_every_panel_or_says_why(tmp_path):
    from xtfclip_lib.workbook.plots import pretraining_summary
    info = {"source": "tiny", "metrics": {
        "loss_curve": [[10, 4.0], [20, 3.1], [30, 2.5]],
        "spread_before": {"mean_cosine": 0.93, "mean_cosine_proj": 0.95},
        "spread_after": {"mean_cosine": 0.2, "mean_cosine_proj": 0.1},
        "zero_shot_before": {"top1": 0.05, "top1_ground": 0.06, "top1_aerial": 0.04, "chance": 0.04},
        "zero_shot_after": {"top1": 0.4, "top1_ground": 0.5, "top1_aerial": 0.3, "chance": 0.04}}}
    fig = pretraining_summary(info, path=tmp_path / "p.png")
    loss_ax, spread_ax, shot_ax = fig.axes
    assert len(loss_ax.lines) == 1 and len(shot_ax.patches) == 6
    assert [round(p.get_height(), 2) for p in spread_ax.patches] == [0.93, 0.95, 0.2, 0.1]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    empty = pretraining_summary({"source": "OpenAI CLIP weights"})
    assert all(not ax.axison for ax in empty.axes)
    assert "OpenAI" in empty.axes[0].texts[0].get_text()


def test_training_diagnostics_plots_accuracies_and_triplet_distances(tmp_path):
    from xtfclip_lib.workbook.plots import training_diagnostics
    metrics = pd.DataFrame({"epoch": [1, 2, 3], "acc_img": [0.1, 0.4, 0.7], "acc_i2t": [0.3, 0.5, 0.8],
                            "dist_pos_img": [2.0, 1.5, 1.2], "dist_neg_img": [1.8, 1.9, 2.1]})
    fig = training_diagnostics(metrics, path=tmp_path / "d.png")
    acc_ax, dist_ax = fig.axes
    assert [line.get_label() for line in acc_ax.lines] == ["acc_img", "acc_i2t"]
    np.testing.assert_allclose(dist_ax.lines[1].get_ydata(), [1.8, 1.9, 2.1])
    assert dist_ax.lines[1].get_linestyle() == "--"
    assert (tmp_path / "d.png").is_file()
    empty = training_diagnostics(pd.DataFrame({"epoch": [1]}))
    assert "not logged" in empty.axes[1].texts[0].get_text()
