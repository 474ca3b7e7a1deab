"""The synthetic aerial-ground set: determinism, layout, CSVs, splits, views, and the CLI."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xtfclip_lib.data.synth
from xtfclip_lib.__main__ import main
from xtfclip_lib.data.attributes import ATTRIBUTES, CSV_COLUMNS, UNKNOWN_CODE
from xtfclip_lib.data.layout import CASE_DIRS
from xtfclip_lib.data.synth import (ATTRIBUTE_VALUES, GENERATOR_VERSION, SynthConfig, SynthParams, generate_synthetic,
                                    render_tracklet, sample_identity)
from xtfclip_lib.data.synth import write
from xtfclip_lib.data.synth.body import _build_figure
from xtfclip_lib.data.synth.colour import _camera_transform
from xtfclip_lib.data.synth.geometry import _camera_matrix, _pose
from xtfclip_lib.data.synth.identities import UPPER
from xtfclip_lib.data.synth.params import PALETTE
from xtfclip_lib.data.synth.raster import _figure_bbox

SMALL = dict(num_ids=12, min_frames=8, max_frames=10, progress=False)
FRAME = re.compile(r"^(train|case1_aerial_to_ground/(?:query|gallery)|case2_ground_to_aerial/(?:query|gallery))"
                   r"/(\d{4})/(\2_C(\d)_T(\d{3}))/\3_F(\d{4})\.jpg$")
CSV_FILES = {"train": "train.csv", "case1": "case1_aerial_to_ground.csv", "case2": "case2_ground_to_aerial.csv"}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tracklets(root: Path) -> dict[str, list[tuple[int, int, str, int]]]:
    """split folder -> [(pid, cam, tracklet name, number of frames)], parsed from frame paths."""
    frames: dict[tuple[str, str], list[int]] = {}
    meta: dict[tuple[str, str], tuple[int, int]] = {}
    for path in root.rglob("*.jpg"):
        rel = path.relative_to(root).as_posix()
        m = FRAME.match(rel)
        assert m, f"frame path {rel!r} does not follow the layout"
        frames.setdefault((m[1], m[3]), []).append(int(m[6]))
        meta[(m[1], m[3])] = (int(m[2]), int(m[4]))
    out: dict[str, list] = {}
    for (split, name), numbers in frames.items():
        assert sorted(numbers) == list(range(len(numbers))), f"{split}/{name}: frame numbers not 0..n-1"
        out.setdefault(split, []).append((*meta[(split, name)], name, len(numbers)))
    return out


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    generate_synthetic(root, seed=3, workers=1, **SMALL)
    return root


def test_same_seed_gives_identical_bytes_whatever_the_pool(small_root, tmp_path):
    other = tmp_path / "b"
    summary = generate_synthetic(other, seed=3, workers=2, **SMALL)
    a, b = _files(small_root), _files(other)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), "same seed, different bytes"
    assert summary["digest"] == json.loads(a["manifest.json"])["digest"]


def test_different_seed_gives_different_set(small_root, tmp_path):
    summary = generate_synthetic(tmp_path / "c", seed=4, workers=1, **SMALL)
    assert summary["digest"] != json.loads((small_root / "manifest.json").read_text())["digest"]


def test_digest_covers_every_file(small_root):
    manifest = json.loads((small_root / "manifest.json").read_text())
    files = _files(small_root)
    assert manifest["files"] == len(files) - 1              # all but the manifest itself
    assert manifest["bytes"] == sum(len(v) for k, v in files.items() if k != "manifest.json")
    assert manifest["version"] == GENERATOR_VERSION and manifest["args"]["seed"] == 3


def test_layout_names_lengths_and_frame_sizes(small_root):
    assert sorted(p.name for p in small_root.iterdir()) == [
        "attributes", "case1_aerial_to_ground", "case2_ground_to_aerial", "manifest.json", "train"]
    tracklets = _tracklets(small_root)
    assert set(tracklets) == {"train", "case1_aerial_to_ground/query", "case1_aerial_to_ground/gallery",
                              "case2_ground_to_aerial/query", "case2_ground_to_aerial/gallery"}
    manifest = json.loads((small_root / "manifest.json").read_text())
    for split, items in tracklets.items():
        assert manifest["counts"][split]["tracklets"] == len(items)
        assert manifest["counts"][split]["frames"] == sum(n for *_, n in items)
        for pid, cam, name, n in items:
            assert 8 <= n <= 10, f"{split}/{name} has {n} frames"
            frame = small_root / split / f"{pid:04d}" / name / f"{name}_F0000.jpg"
            with Image.open(frame) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                h, w = im.height, im.width
            if cam >= 4:
                assert 44 <= h <= 72 and w <= h * 1.2, f"aerial {name} is {h}x{w}"
            else:
                assert 116 <= h <= 140 and 0.4 * h <= w <= 0.6 * h, f"ground {name} is {h}x{w}"


def test_splits_cameras_and_distractors(small_root):
    tracklets = _tracklets(small_root)
    pids = {split: {t[0] for t in items} for split, items in tracklets.items()}
    test = set().union(*(p for s, p in pids.items() if s != "train"))
    assert not pids["train"] & test, "train and test identities overlap"
    for pid in pids["train"]:
        cams = {cam for p, cam, *_ in tracklets["train"] if p == pid}
        assert cams & {0, 1, 2, 3} and cams & {4, 5}, f"train pid {pid} lacks a platform: {cams}"
    assert {t[1] for t in tracklets["case1_aerial_to_ground/query"]} <= {4, 5}
    assert {t[1] for t in tracklets["case1_aerial_to_ground/gallery"]} <= {0, 1, 2, 3}
    assert {t[1] for t in tracklets["case2_ground_to_aerial/query"]} <= {0, 1, 2, 3}
    assert {t[1] for t in tracklets["case2_ground_to_aerial/gallery"]} <= {4, 5}
    for case in ("case1_aerial_to_ground", "case2_ground_to_aerial"):
        assert pids[f"{case}/query"] <= pids[f"{case}/gallery"], f"{case}: a query pid has no gallery match"
    # Query tracklets are rendered separately per case: no tracklet name is shared between cases.
    names = [t[2] for items in tracklets.values() for t in items]
    assert len(names) == len(set(names))


def test_gallery_only_distractors(tmp_path):
    root = tmp_path / "d"
    summary = generate_synthetic(root, num_ids=36, min_frames=8, max_frames=8, train_tracklets=(2, 2),
                                 distractors=2, workers=1, progress=False)
    tracklets = _tracklets(root)
    for case, distractors in summary["splits"]["distractors"].items():
        folder = CASE_DIRS[case]
        assert len(distractors) == 2
        assert set(distractors) <= {t[0] for t in tracklets[f"{folder}/gallery"]}
        assert not set(distractors) & {t[0] for t in tracklets[f"{folder}/query"]}


def test_attribute_csvs(small_root):
    tracklets = _tracklets(small_root)
    split_pids = {"train": {t[0] for t in tracklets["train"]},
                  "case1": {t[0] for s in ("query", "gallery") for t in tracklets[f"case1_aerial_to_ground/{s}"]},
                  "case2": {t[0] for s in ("query", "gallery") for t in tracklets[f"case2_ground_to_aerial/{s}"]}}
    unknown = total = 0
    for split, name in CSV_FILES.items():
        with open(small_root / "attributes" / name, newline="") as f:
            rows = list(csv.reader(f))
        assert tuple(rows[0]) == CSV_COLUMNS
        ids = [int(r[0]) for r in rows[1:]]
        assert len(ids) == len(set(ids)) and set(ids) <= split_pids[split]
        assert 1 <= len(split_pids[split] - set(ids)) <= 2, f"{name}: expected a pid or two left out"
        for row in rows[1:]:
            for attr, value in zip(ATTRIBUTES, row[1:]):
                assert 0 <= int(value) <= UNKNOWN_CODE[attr], f"{name}: {attr}={value}"
                unknown += int(value) == UNKNOWN_CODE[attr]
                total += 1
    assert 0.02 < unknown / total < 0.25, f"{unknown}/{total} unknown codes"


def test_identities_are_deterministic_and_soft_biometrics_not_unique():
    a, b = sample_identity(7, 0), sample_identity(7, 0)
    assert a == b and sample_identity(8, 0) != a
    people = [sample_identity(pid, 0) for pid in range(1, 61)]
    for idn in people:
        assert all(0 <= idn.attributes[k] < UNKNOWN_CODE[k] for k in ATTRIBUTES)
        assert len(ATTRIBUTE_VALUES["upper_clothing"]) == UNKNOWN_CODE["upper_clothing"]
    masked = [tuple(p.attributes[k] for k in ("gender", "age", "ethnicity", "body_volume")) for p in people]
    assert len(set(masked)) < len(masked), "soft biometrics should be shared by some identities"
    # A skewed, limited palette: the commonest upper-garment colour is worn by many people.
    palette = np.array([e[1] for e in PALETTE[:SynthParams().palette_size]], np.float64)
    nearest = [int(np.abs(palette - np.array(p.colours[UPPER])).sum(1).argmin()) for p in people]
    assert np.bincount(nearest).max() >= 6


def test_aerial_view_is_a_different_projection_not_a_resized_ground_view():
    """From a UAV the body is foreshortened: the head-to-hip distance, measured in head radii (a
    ratio that resizing cannot change), shrinks by about cos(elevation)."""
    for pid in range(1, 11):
        idn = sample_identity(pid, 1)
        joints = _pose(idn, 1.0, idn.attributes["accessories"])
        for heading in (0.3, 1.6, 3.0):
            ratios = []
            for elevation in (10, 75):
                C = _camera_matrix(heading, np.radians(elevation))
                head, hip = joints["head"] @ C, (joints["hip1"] + joints["hip-1"]) / 2 @ C
                ratios.append(abs(head[1] - hip[1]) / (idn.head * idn.height))
            assert ratios[0] > 2.5 * ratios[1], (pid, heading, ratios)
        # ... and the whole figure is less tall for its width (side view, where gait adds no depth).
        ground = _figure_bbox(_build_figure(idn, 1.0, 1.6, np.radians(10), (1, 0), False)[0])
        aerial = _figure_bbox(_build_figure(idn, 1.0, 1.6, np.radians(75), (1, 0), True)[0])
        aspect_ground = (ground[3] - ground[2]) / (ground[1] - ground[0])
        aspect_aerial = (aerial[3] - aerial[2]) / (aerial[1] - aerial[0])
        assert aspect_ground > 1.8 * aspect_aerial, (pid, aspect_ground, aspect_aerial)


def test_aerial_frames_are_not_near_identical_to_resized_ground_frames(small_root):
    tracklets = _tracklets(small_root)["train"]

    def load(pid, name, size):
        path = small_root / "train" / f"{pid:04d}" / name / f"{name}_F0000.jpg"
        with Image.open(path) as im:
            return np.asarray(im.convert("L").resize(size, Image.BILINEAR), np.float32)

    for pid in {t[0] for t in tracklets}:
        ground = [load(pid, name, (16, 32)) for p, cam, name, _ in tracklets if p == pid and cam < 4]
        aerial = [load(pid, name, (16, 32)) for p, cam, name, _ in tracklets if p == pid and cam >= 4]
        closest = min(np.abs(a - g).mean() for a in aerial for g in ground)
        assert closest > 8.0, f"pid {pid}: an aerial frame is within {closest:.1f} grey levels of a ground one"


def test_render_tracklet_is_seeded_and_walks():
    idn = sample_identity(5, 0)
    quiet = SynthParams().scaled(0.0)       # no noise, jitter or clutter: only the gait moves
    one = render_tracklet(idn, 2, 12, np.random.default_rng(1), quiet)
    two = render_tracklet(idn, 2, 12, np.random.default_rng(1), quiet)
    assert len(one) == 12 and all(np.array_equal(x, y) for x, y in zip(one, two))
    assert len({f.shape for f in one}) == 1 and one[0].dtype == np.uint8
    diffs = [np.abs(one[t].astype(int) - one[t + 1]).mean() for t in range(11)]
    assert min(diffs) > 0.05, "consecutive frames should differ (the legs and arms swing)"
    with pytest.raises(ValueError, match="camera 6"):
        render_tracklet(idn, 6, 4, np.random.default_rng(0))


def test_refuses_non_empty_root_and_overwrite_replaces_it(tmp_path):
    root = tmp_path / "busy"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty.*overwrite"):
        generate_synthetic(root, num_ids=8, max_frames=8, workers=1, progress=False)
    assert (root / "keep.txt").exists()
    generate_synthetic(root, num_ids=8, max_frames=8, workers=1, progress=False, overwrite=True)
    assert not (root / "keep.txt").exists() and (root / "manifest.json").exists()


def test_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(task):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(write, "_render_identity", broken)
    with pytest.raises(RuntimeError, match="renderer broke"):
        generate_synthetic(tmp_path / "out", num_ids=8, max_frames=8, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_ids"):
        generate_synthetic("unused", num_ids=3)
    with pytest.raises(ValueError, match="max_frames"):
        generate_synthetic("unused", num_ids=12, min_frames=9, max_frames=8)
    with pytest.raises(ValueError, match="palette_size"):
        generate_synthetic("unused", num_ids=12, params=SynthParams(palette_size=1))
    with pytest.raises(ValueError, match="difficulty"):
        SynthParams().scaled(-1.0)
    harder = SynthParams().scaled(2.0)
    assert harder.hue_jitter == pytest.approx(2 * SynthParams().hue_jitter)
    assert harder.palette_size == SynthParams().palette_size
    assert SynthParams(occlusion_prob=0.6).scaled(3.0).occlusion_prob == 1.0


def test_cli_writes_the_set_and_reports_bad_overrides(tmp_path, capsys):
    root = tmp_path / "cli"
    args = ["synth", "--root", str(root), "--ids", "8", "--max-frames", "8", "--workers", "1", "--no-progress"]
    assert main([*args, "--set", "noise_std=0", "--palette-size", "6"]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["params"]["noise_std"] == 0 and manifest["params"]["palette_size"] == 6
    assert main(args) == 2                                   # the root is no longer empty
    assert "not empty" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--set", "colour=3"]) == 2
    assert "colour=3" in capsys.readouterr().err


def test_leftovers_of_a_killed_generation_are_removed_at_the_next_start(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()                                           # a PID that no longer runs
    stale = tmp_path / f".ag.partial-{dead.pid}"
    (stale / "train").mkdir(parents=True)
    alive = tmp_path / f".ag.partial-{os.getppid()}"       # a running process's: left alone
    alive.mkdir()
    generate_synthetic(tmp_path / "ag", num_ids=8, max_frames=8, workers=1, progress=False)
    assert not stale.exists() and alive.exists()
    assert (tmp_path / "ag" / "manifest.json").is_file()


def test_ground_cast_scales_the_ground_cameras_cast_only():
    """`ground_cast` weakens the ground cameras' colour cast and haze relative to `camera_cast`;
    the UAV cameras keep theirs, and 0 leaves a ground view with no cast at all."""
    def transform(cam, **kw):
        return _camera_transform(cam, np.random.default_rng(3), SynthParams(**kw))

    aerial_full, aerial_none = transform(4, ground_cast=1.0), transform(4, ground_cast=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(aerial_full, aerial_none))
    ground_none, no_cast = transform(1, ground_cast=0.0), transform(1, camera_cast=0.0)
    assert all(np.allclose(a, b) for a, b in zip(ground_none, no_cast))
    half, full = transform(1, ground_cast=0.5), transform(1, ground_cast=1.0)
    assert not np.allclose(half[0], full[0]) and not np.allclose(half[0], no_cast[0])
    with pytest.raises(ValueError, match="ground_cast"):
        SynthParams(ground_cast=-1.0).validate()


def test_cli_set_unknown_or_dotted_keys_are_the_configs_errors(tmp_path, capsys):
    root = tmp_path / "never"
    args = ["synth", "--root", str(root), "--ids", "8", "--workers", "1", "--no-progress"]
    assert main([*args, "--set", "params.colour=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'params.colour'" in err and "noise_std" in err     # the valid names are listed
    assert main([*args, "--set", "num_ids.x=3"]) == 2
    assert "'num_ids' is a value, not a section" in capsys.readouterr().err
    assert main([*args, "--set", "noise_std"]) == 2
    assert "not of the form key=value" in capsys.readouterr().err
    assert not root.exists() and list(tmp_path.iterdir()) == []            # nothing was written


def test_cli_set_wrong_type_names_the_key(tmp_path, capsys):
    root = tmp_path / "never"
    args = ["synth", "--root", str(root), "--ids", "8", "--workers", "1", "--no-progress"]
    assert main([*args, "--set", "noise_std=loud"]) == 2
    assert "'params.noise_std' expects float" in capsys.readouterr().err
    assert main([*args, "--set", "train_tracklets=[2,many]"]) == 2
    assert "'train_tracklets' expects a list of int" in capsys.readouterr().err
    assert main([*args, "--set", "num_ids=true"]) == 2
    assert "'num_ids' expects int" in capsys.readouterr().err
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_cli_set_values_and_flags_reach_the_generator(tmp_path, monkeypatch):
    seen = []

    def fake(root, *, config, **kw):
        seen.append(config)
        return {"counts": {}, "root": str(root), "digest": "sha256:0"}

    monkeypatch.setattr(xtfclip_lib.data.synth, "generate_synthetic", fake)
    assert main(["synth", "--root", str(tmp_path / "x"), "--set", "num_ids=30", "--set", "train_tracklets=[2,3]",
                 "--set", "params.noise_std=0.5", "--set", "ground_cast=0.2", "--set", "palette_size=4",
                 "--ids", "9", "--palette-size", "5", "--difficulty", "1.5", "--no-progress"]) == 0
    config = seen[0]
    assert config.num_ids == 9 and config.params.palette_size == 5        # a flag wins over --set
    assert config.train_tracklets == (2, 3) and config.difficulty == 1.5
    assert config.params.noise_std == 0.5 and config.params.ground_cast == 0.2
    assert config.seed == SynthConfig().seed and config.max_frames == SynthConfig().max_frames


def test_cli_set_reaches_the_files_and_a_config_equals_the_keywords(tmp_path):
    root = tmp_path / "cli"
    assert main(["synth", "--root", str(root), "--ids", "8", "--max-frames", "8", "--workers", "1", "--no-progress",
                 "--set", "train_tracklets=[2,2]", "--set", "jpeg_quality=80"]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["args"]["train_tracklets"] == [2, 2] and manifest["args"]["jpeg_quality"] == 80
    assert all(n == 2 for n in (len(list(p.iterdir())) for p in (root / "train").iterdir()))
    config = SynthConfig(num_ids=8, max_frames=8, train_tracklets=(2, 2), jpeg_quality=80)
    summary = generate_synthetic(tmp_path / "api", config=config, workers=1, progress=False)
    assert summary["digest"] == manifest["digest"]


def test_synth_defaults_are_the_run_configs_and_help_lists_the_keys(capsys):
    from xtfclip_lib.config import DataConfig

    assert (SynthConfig().num_ids, SynthConfig().seed) == (DataConfig().synth_ids, DataConfig().synth_seed)
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DataConfig().synth_ids})" in out
    for key in ("num_ids", "train_tracklets", "jpeg_quality", "params.KEY", "noise_std", "ground_cast"):
        assert key in out, key
