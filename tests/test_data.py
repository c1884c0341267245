"""PatchStore over each layout, the pack cache, and every kind of bad input a user can hand it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from pcam_core.data.pack import cache_dir_for, load_pack
from pcam_core.data.readers import open_dataset, pack
from pcam_core.geometry import CENTRE

STATS = ["id", "split", "label", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "brightness",
         "saturation", "tissue_frac", "blank"]


def kaggle_copy(demo_dir: Path, tmp_path: Path, n: int | None = None) -> Path:
    """A writable copy of the demo set, optionally cut to its first n training patches."""
    out = tmp_path / "kaggle"
    shutil.copytree(demo_dir, out, ignore=shutil.ignore_patterns(".pcam_cache"))
    if n is not None:
        labels = pd.read_csv(out / "train_labels.csv")
        for pid in labels["id"][n:]:
            (out / "train" / f"{pid}.tif").unlink()
        labels[:n].to_csv(out / "train_labels.csv", index=False)
    return out


def test_kaggle_folder_reads_every_patch_with_its_label(demo_dir):
    store = open_dataset(demo_dir)
    labels = pd.read_csv(demo_dir / "train_labels.csv", dtype={"id": str})
    assert store.layout == "kaggle"
    assert len(store) == 660 and store.split_names() == ["train", "test"]
    train = store.split_indices("train")
    assert list(store.ids[train]) == list(labels["id"])
    assert (store.labels[train] == labels["label"].to_numpy()).all()
    assert (store.labels[store.split_indices("test")] == -1).all()
    assert store.has_labels("train") and not store.has_labels("test") and not store.has_labels()
    for i in (0, 17, 659):
        split = store.splits[i]
        expected = tifffile.imread(demo_dir / split / f"{store.ids[i]}.tif")
        assert np.array_equal(store[i], expected)
    picked = [5, 3, 640, 3]
    batch = store.batch(picked)
    assert batch.shape == (4, 96, 96, 3) and batch.dtype == np.uint8
    assert all(np.array_equal(batch[k], store[i]) for k, i in enumerate(picked))
    assert list(store.index_of(store.ids[picked])) == picked


def test_stats_table_describes_each_patch(demo_dir):
    store = open_dataset(demo_dir)
    stats = store.stats
    assert list(stats.columns) == STATS and len(stats) == len(store)
    assert (stats["id"].to_numpy() == store.ids).all()
    x = store[3].astype(float)
    assert stats["mean_r"][3] == pytest.approx(x[..., 0].mean(), abs=2.0)
    assert stats["brightness"][3] == pytest.approx((x @ [0.299, 0.587, 0.114]).mean(), abs=2.0)
    assert stats["tissue_frac"].between(0, 1).all()
    # the demo's blank/fat patches are pale with little tissue; tumour patches are darker than normal ones
    assert stats["blank"].any() and not stats["blank"].all()
    labelled = stats[stats["label"] >= 0]
    by_label = labelled.groupby("label")["brightness"].mean()
    assert by_label[1] < by_label[0]


def test_masks_follow_the_label_rule(demo_dir):
    store = open_dataset(demo_dir)
    train = store.split_indices("train")
    masks = store.masks(train)
    assert masks.shape == (len(train), 96, 96)
    touches = masks[:, CENTRE, CENTRE].any(axis=(1, 2))
    assert (touches == (store.labels[train] == 1)).all()
    ring_only = (store.labels[train] == 0) & masks.any(axis=(1, 2))
    assert ring_only.sum() >= 10, "some normal patches must carry tumour in the outer ring only"
    assert 0.3 < (store.labels[train] == 1).mean() < 0.5


def test_pcam_h5_folder_keeps_its_three_splits(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"train": 20, "valid": 6, "test": 5}
    x_all = {}
    for split, n in sizes.items():
        x_all[split] = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x_all[split], compression="gzip")
        if split != "test":
            with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
                f.create_dataset("y", data=(np.arange(n) % 2).reshape(n, 1, 1, 1).astype(np.uint8))
    store = open_dataset(tmp_path)
    assert store.layout == "pcam" and store.split_names() == ["train", "valid", "test"]
    assert [len(store.split_indices(s)) for s in sizes] == [20, 6, 5]
    valid = store.split_indices("valid")
    assert list(store.labels[valid]) == [0, 1, 0, 1, 0, 1]
    assert store.has_labels("valid") and not store.has_labels("test")
    # random, repeated, out-of-order access across split files
    picked = [valid[4], 0, store.split_indices("test")[2], valid[4], 19]
    expected = [x_all["valid"][4], x_all["train"][0], x_all["test"][2], x_all["valid"][4], x_all["train"][19]]
    assert np.array_equal(store.batch(picked), np.stack(expected))
    assert len(store.stats) == 31 and store.stats["mean_g"][0] == pytest.approx(
        x_all["train"][0][::3, ::3, 1].mean(), abs=1e-3)


def test_pcam_file_of_the_wrong_shape_is_refused(tmp_path):
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((3, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="96 x 96 x 3"):
        open_dataset(tmp_path)


def test_image_folder_with_a_labels_csv(tmp_path, demo_dir):
    store = open_dataset(demo_dir)
    for i in range(6):
        Image.fromarray(store[i]).save(tmp_path / f"p{i}.png")
    Image.fromarray(store[6]).save(tmp_path / "p6.jpg", quality=95)
    pd.DataFrame({"id": ["p0", "p1", "p2"], "label": [1, 0, 1]}).to_csv(tmp_path / "labels.csv", index=False)
    folder = open_dataset(tmp_path)
    assert folder.layout == "folder" and len(folder) == 7
    assert dict(zip(folder.ids, folder.labels, strict=True))["p2"] == 1
    assert list(folder.ids[folder.split_indices("test")]) == ["p3", "p4", "p5", "p6"]
    assert np.array_equal(folder.batch(folder.index_of(["p4"]))[0], store[4])


def test_cache_is_reused_then_rebuilt_when_the_listing_changes(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path, n=40)
    first = pack(data)
    assert not first["reused"] and first["n"] == 100
    again = pack(data)
    assert again["reused"] and again["n"] == 100
    fingerprint = open_dataset(data).fingerprint
    # a file removed from train/ (and its label row) changes the listing: the cache is rebuilt
    labels = pd.read_csv(data / "train_labels.csv")
    (data / "train" / f"{labels['id'][0]}.tif").unlink()
    labels[1:].to_csv(data / "train_labels.csv", index=False)
    store = open_dataset(data)
    assert len(store) == 99 and store.fingerprint != fingerprint
    assert pack(data)["reused"]
    assert pack(data, force=True)["reused"] is False


def test_pack_writes_nothing_inside_the_data_folder(demo_dir, tmp_path, monkeypatch):
    data = kaggle_copy(demo_dir, tmp_path)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    monkeypatch.delenv("PCAM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    store = open_dataset(data)
    assert len(store) == 660
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before, "the data folder is only read"
    assert Path(store.cache_dir).is_relative_to(tmp_path / "home-cache" / "pcam-review")
    # a cache an earlier version wrote inside the folder is still used, not decoded again
    legacy = data / ".pcam_cache"
    shutil.move(Path(store.cache_dir), legacy)
    assert cache_dir_for(data) == legacy
    assert pack(data)["reused"]


def test_interrupted_pack_leaves_no_cache_that_reads_as_complete(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path)
    cache = cache_dir_for(data)

    def crash(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack(data, progress=crash)
    assert load_pack(cache, None) is None
    assert not list(cache.glob("pack.tmp-*")), "the half-written pack must be removed"
    assert len(open_dataset(data)) == 660
    # a rebuild that dies keeps the previous complete cache
    (data / "train" / "extra.tif").write_bytes((data / "test").joinpath(
        next(iter(sorted((data / "test").iterdir()))).name).read_bytes())
    with pytest.raises(KeyboardInterrupt):
        pack(data, progress=crash)
    previous = load_pack(cache, None)
    assert previous is not None and len(previous.index) == 660


def test_killed_pack_process_is_rebuilt_on_next_open(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path)
    cache = cache_dir_for(data)
    # what a SIGKILL leaves: a temp folder with a partial images.npy and no manifest
    partial = cache / "pack.tmp-424242"
    partial.mkdir(parents=True)
    np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8, shape=(660, 96, 96, 3))
    assert load_pack(cache, None) is None
    store = open_dataset(data)
    assert len(store) == 660 and store[0].any()
    assert not partial.exists(), "a dead process's half-written pack is cleaned up"


@pytest.mark.slow
def test_pack_from_a_threaded_process_does_not_hang(demo_dir, tmp_path):
    """The app server runs many threads and the train job has torch loaded; forking either can
    deadlock a worker, so pack starts fresh workers there, and those must not re-run the caller's
    script (here an unguarded one, as AppTest runs a page). Run with a deadline so a hang fails."""
    data = kaggle_copy(demo_dir, tmp_path, n=50)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys, threading, time\n"
        "import torch\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "from pcam_core.data.pack import pool_context\n"
        "assert pool_context().get_start_method() == 'forkserver'\n"
        "from pcam_core.data.readers import open_dataset\n"
        f"print(len(open_dataset({str(data)!r})))\n"
    )
    repo = str(Path(__file__).parents[1])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=repo,
                          env={**os.environ, "PYTHONPATH": repo})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "110"


def make_bad_kaggle(demo_dir: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    data = kaggle_copy(demo_dir, tmp_path, n=30)
    ids = list(pd.read_csv(data / "train_labels.csv", dtype={"id": str})["id"])
    good = tifffile.imread(data / "train" / f"{ids[0]}.tif")
    raw = (data / "train" / f"{ids[1]}.tif").read_bytes()
    (data / "train" / f"{ids[1]}.tif").write_bytes(raw[: len(raw) // 2])  # truncated
    (data / "train" / f"{ids[2]}.tif").write_bytes(b"not an image at all")  # unreadable
    tifffile.imwrite(data / "train" / f"{ids[3]}.tif", good[:64, :64], photometric="rgb")  # 64x64
    tifffile.imwrite(data / "train" / f"{ids[4]}.tif", np.dstack([good, good[..., :1]]), photometric="rgb",
                     extrasamples=["unassalpha"])  # RGBA
    tifffile.imwrite(data / "train" / f"{ids[5]}.tif", good[..., 0])  # grey
    (data / "train" / f"{ids[6]}.tif").unlink()  # id without a file
    tifffile.imwrite(data / "train" / "stray.tif", good, photometric="rgb")  # file without an id
    with open(data / "train_labels.csv", "a") as f:
        f.write("../outside,1\n")
    return data, ids


def test_bad_files_are_skipped_counted_and_listed(demo_dir, tmp_path):
    data, ids = make_bad_kaggle(demo_dir, tmp_path)
    store = open_dataset(data)
    assert len(store.split_indices("train")) == 30 - 6
    reasons = dict(zip(store.skipped["path"], store.skipped["reason"], strict=True))
    assert "unreadable" in reasons[f"train/{ids[1]}.tif"]
    assert "unreadable" in reasons[f"train/{ids[2]}.tif"]
    assert "64x64, expected 96x96" in reasons[f"train/{ids[3]}.tif"]
    assert "4 channels" in reasons[f"train/{ids[4]}.tif"]
    assert "greyscale" in reasons[f"train/{ids[5]}.tif"]
    assert "no such file" in reasons[f"train/{ids[6]}.tif"]
    assert "no label" in reasons["train/stray.tif"]
    assert "may only hold ASCII letters" in reasons["train_labels.csv id '../outside'"]
    assert not any(i in store.ids for i in ids[1:7]) and ids[0] in store.ids
    summary = store.describe()
    assert "bad files skipped: 8" in summary and f"train/{ids[3]}.tif: size 64x64" in summary


@pytest.mark.parametrize(
    "csv, message",
    [
        ("image,target\na,1\n", "needs the columns id,label"),
        ("id,label\na,1\nb,2\n", "labels must be 0 or 1"),
        ("id,label\na,1\nb,yes\n", "labels must be 0 or 1"),
        ("id,label\na,1\na,0\n", "duplicate id"),
    ],
)
def test_structural_csv_problems_stop_with_one_message(demo_dir, tmp_path, csv, message):
    data = kaggle_copy(demo_dir, tmp_path, n=5)
    (data / "train_labels.csv").write_text(csv)
    with pytest.raises(ValueError, match=message):
        open_dataset(data)


def test_folders_that_are_not_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no known layout"):
        open_dataset(tmp_path / "docs")
    (tmp_path / "allbad").mkdir()
    (tmp_path / "allbad" / "a.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="none of the 1 image files"):
        open_dataset(tmp_path / "allbad")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcam_core", *args], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])


def test_cli_info_and_one_line_errors(demo_dir, tmp_path):
    ok = run_cli("info", "--data", str(demo_dir))
    assert ok.returncode == 0 and "train: 600" in ok.stdout and "test: 60 (unlabelled)" in ok.stdout
    bad = run_cli("info", "--data", str(tmp_path / "missing"))
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error: dataset folder")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "train_labels.csv").write_text("name,y\n")
    bad = run_cli("pack", "--data", str(tmp_path / "k"))
    assert bad.returncode == 2 and "needs the columns id,label" in bad.stderr


def test_pack_and_info_do_not_import_torch(demo_dir):
    code = ("import sys; from pcam_core.cli.main import main; main(['info', '--data', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'info imported torch'")
    done = subprocess.run([sys.executable, "-c", code, str(demo_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.sample
def test_real_kaggle_sample(sample_dir):
    store = open_dataset(sample_dir)
    assert len(store.split_indices("train")) == 6096 and len(store.split_indices("test")) == 29
    assert (store.labels == 1).sum() == 2497 and len(store.skipped) == 0
    # the direct-read fast path gives exactly what tifffile decodes
    for i in np.random.default_rng(0).choice(len(store), 25, replace=False):
        path = sample_dir / store.splits[i] / f"{store.ids[i]}.tif"
        assert np.array_equal(store[i], tifffile.imread(path))
    assert store.stats["tissue_frac"].median() > 0.5


def test_demo_is_deterministic_and_interrupted_runs_leave_nothing(tmp_path):
    from pcam_core.data.demo import make_demo

    a = make_demo(tmp_path / "a", n_train=30, n_test=3, seed=7)
    make_demo(tmp_path / "b", n_train=30, n_test=3, seed=7)
    assert a["n_train"] == 30 and a["n_test"] == 3
    labels = [(tmp_path / d / "train_labels.csv").read_bytes() for d in "ab"]
    assert labels[0] == labels[1]
    first = sorted((tmp_path / "a" / "train").iterdir())[0]
    assert first.read_bytes() == (tmp_path / "b" / "train" / first.name).read_bytes()

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_demo(tmp_path / "c", n_train=600, n_test=0, progress=stop)
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.tmp-*"))
    with pytest.raises(ValueError, match="not empty"):
        make_demo(tmp_path / "a", n_train=5, n_test=0)
