"""The figures of notebooks 01 and 05 read without a legend: attribute values by name, and an
embedding whose axes one outlier cannot squash."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xtfclip_lib.workbook import explore

from xtfclip_lib.workbook import plots
from xtfclip_lib.data.attributes import ATTRIBUTES, UNKNOWN_CODE
from xtfclip_lib.data import ATTRIBUTE_VALUES


def test_attribute_grid_labels_bars_with_value_names():
    tables = {"train": pd.DataFrame({a: [0, 1, UNKNOWN_CODE[a]] for a in ATTRIBUTES},
                                    index=pd.Index([1, 2, 3], name="id"))}
    distribution = explore.attribute_distribution(tables, ATTRIBUTE_VALUES)
    fig = plots.attribute_grid(distribution)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert [t.get_text() for t in by_title["gender"].get_xticklabels()] == ["male", "female", "unknown"]
    assert [t.get_text() for t in by_title["accessories"].get_xticklabels()] == \
        [*ATTRIBUTE_VALUES["accessories"], "unknown"]
    # without names (real data): the codes, the unknown code still said in words
    coded = plots.attribute_grid(explore.attribute_distribution(tables))
    labels = [t.get_text() for t in coded.axes[0].get_xticklabels()]
    assert labels == ["0", "1", "unknown"]


def test_robust_limits_leave_out_a_far_outlier_but_keep_ordinary_points():
    values = np.random.default_rng(0).normal(size=200)
    lo, hi = plots.robust_limits(values)
    assert lo <= values.min() and hi >= values.max()          # nothing ordinary is cut
    with_outlier = np.append(values, 1000.0)
    lo2, hi2 = plots.robust_limits(with_outlier)
    assert hi2 < 10                                            # the outlier does not stretch it
    assert lo2 <= values.min() and hi2 >= values.max()         # and the rest stays in view
    assert plots.robust_limits([2.0, 2.0, 2.0])[0] < 2.0 < plots.robust_limits([2.0, 2.0, 2.0])[1]
    with pytest.raises(ValueError, match="no finite"):
        plots.robust_limits([np.nan])


def test_embedding_plot_axes_ignore_one_outlying_tracklet():
    rng = np.random.default_rng(3)
    pids = np.repeat(np.arange(10), 6)
    platforms = np.tile(["ground", "ground", "ground", "aerial", "aerial", "aerial"], 10)
    features = rng.normal(size=(60, 8)) + 3 * np.eye(8)[pids % 8]
    features[0] = 200.0                     # one tracklet far from all others (unnormalised)
    fig = plots.embedding_plot(features, pids, platforms, normalize=False)
    ax = fig.axes[0]
    coords = np.concatenate([c.get_offsets() for c in ax.collections])
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    inside = (coords[:, 0] >= x0) & (coords[:, 0] <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] <= y1)
    assert inside.sum() == 59
    assert any(t.get_text() == "1 of 60 points outside the axes" for t in ax.texts)
    full = plots.embedding_plot(features, pids, platforms, normalize=False, robust=False).axes[0]
    assert not full.texts and full.get_xlim()[1] - full.get_xlim()[0] > 10 * (x1 - x0)
