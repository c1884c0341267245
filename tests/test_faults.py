"""Faults and hostile input: each gets one line on stderr, a non-zero exit, no traceback, nothing left behind.

Full disks are real: a small tmpfs mounted for the test (the suite runs as root here and in CI); where
mounting is not allowed those tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from disks import small_disk

from pcam_core.data.pack import cache_dir_for
from pcam_core.data.readers import open_dataset

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env: dict | None = None, timeout: float = 300, code: str | None = None):
    """Runs `python -m pcam_core ARGS` (or Python `code` with ARGS) with a deadline, so a hang fails."""
    command = [sys.executable, "-c", code, *map(str, args)] if code else [sys.executable, "-m", "pcam_core",
                                                                           *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def cli_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """`cli` without a new interpreter, for errors found before any work starts (torch is loaded once)."""
    from pcam_core.cli.main import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    """Asserts a failed command said one `error:` line with `words` in it and no traceback."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert all(w in errors[0] for w in words), errors[0]
    return errors[0]


def kaggle_copy(demo_dir: Path, out: Path, n: int | None = None) -> Path:
    labels = pd.read_csv(demo_dir / "train_labels.csv", dtype={"id": str})[:n]
    (out / "train").mkdir(parents=True)
    for pid in labels["id"]:
        shutil.copy(demo_dir / "train" / f"{pid}.tif", out / "train" / f"{pid}.tif")
    labels.to_csv(out / "train_labels.csv", index=False)
    return out


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory) -> Path:
    """1,600 patches: 42 MB of pixels, more than the small disks below hold."""
    from pcam_core.data.demo import make_demo

    out = tmp_path_factory.mktemp("big") / "demo"
    make_demo(out, n_train=1600, n_test=0, seed=2)
    return out


@pytest.mark.slow
def test_pack_onto_a_full_disk_says_how_much_it_needs_and_leaves_nothing(big_demo, tmp_path):
    with small_disk(tmp_path / "disk", "20m") as disk:
        done = cli("pack", "--data", big_demo, env={"PCAM_CACHE_DIR": str(disk)})
        one_line_error(done, "needs", "MiB", "PCAM_CACHE_DIR")
        assert not list(disk.rglob("pack.tmp-*"))


def test_a_decode_worker_that_dies_on_a_full_disk_stops_the_pack(big_demo, tmp_path):
    # with the up-front check switched off the workers fill the memory-mapped cache until the disk is
    # full and die of SIGBUS: the pack must notice and stop, not wait for them forever
    code = ("import sys; import pcam_core.data.pack as p; p.check_free_space = lambda *a: None; "
            "from pcam_core.cli.main import main; sys.exit(main(sys.argv[1:]))")
    with small_disk(tmp_path / "disk", "20m") as disk:
        done = cli("pack", "--data", big_demo, env={"PCAM_CACHE_DIR": str(disk)}, code=code, timeout=240)
        one_line_error(done, "worker died", "MiB free")
        assert not list(disk.rglob("pack.tmp-*"))


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_fails_the_run_and_keeps_the_last_one(demo_dir, tmp_path):
    from pcam_core.models.registry import read_checkpoint
    from pcam_core.runs.folder import status

    common = ["train", "--data", demo_dir, "--model", "base_cnn", "--crop", "48", "--batch-size", "64",
              "--threads", "2"]
    probe = tmp_path / "probe"
    assert cli(*common, "--epochs", "1", "--out", probe).returncode == 0
    best, last = ((probe / n).stat().st_size for n in ("best.pt", "last.pt"))
    # room for epoch 1's best.pt and last.pt, not for epoch 2's last.pt beside the old one
    size = best + last + last // 2 + (64 << 10)
    with small_disk(tmp_path / "disk", str(size)) as disk:
        done = cli(*common, "--epochs", "2", "--out", disk / "run")
        one_line_error(done, "disk full", "last.pt")
        state = status(disk / "run")
        assert state["state"] == "failed" and "disk full" in state["message"]
        assert read_checkpoint(disk / "run" / "last.pt")["epoch"] == 1  # resumable from epoch 1
        assert not list((disk / "run").glob(".*.tmp"))


@pytest.mark.parametrize("argv, words", [
    (["train", "--lr", "inf"], ["lr must be"]),
    (["train", "--lr", "nan"], ["lr must be"]),
    (["train", "--threads", "-4"], ["threads must be 0 or more"]),
    (["train", "--warmup-frac", "2"], ["warmup_frac must be"]),
    (["train", "--warmup-frac", "-1"], ["warmup_frac must be"]),
    (["train", "--jitter", "-3"], ["jitter must be"]),
    (["train", "--jitter", "nan"], ["jitter must be"]),
    (["train", "--patience", "-1"], ["patience must be 0 or more"]),
])
def test_out_of_range_training_options_are_refused_up_front(argv, words, demo_dir, tmp_path, capsys):
    done = cli_in_process(capsys, *argv, "--data", demo_dir, "--model", "base_cnn", "--out", tmp_path / "run")
    one_line_error(done, *words)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_evaluate_refuses_a_threshold_that_is_not_a_probability(demo_dir, tmp_path):
    from pcam_core.models.registry import Classifier

    ckpt = Classifier.new("base_cnn").save(tmp_path / "c.pt")
    done = cli("evaluate", "--checkpoint", ckpt, "--data", demo_dir, "--threshold", "nan")
    one_line_error(done, "--threshold", "between 0 and 1")


@pytest.mark.slow
def test_paths_that_cannot_be_written_are_one_line(demo_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    done = cli("train", "--data", demo_dir, "--model", "base_cnn", "--out", blocker / "run")
    one_line_error(done, str(blocker))
    done = cli("demo", "--out", blocker / "demo")
    one_line_error(done, str(blocker))


def test_a_pcam_label_file_without_labels_is_named(demo_dir, tmp_path):
    import h5py

    demo = open_dataset(demo_dir)
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f.create_dataset("x", data=demo.batch(np.arange(4)))
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros((4, 1, 1, 1), np.uint8))  # the key PCam calls y
    one_line_error(cli("info", "--data", tmp_path), "camelyonpatch_level_2_split_train_y.h5")
    truncated = b"\x89HDF\r\n" + b"\0" * 40
    (tmp_path / "camelyonpatch_level_2_split_train_y.h5").write_bytes(truncated)
    one_line_error(cli("info", "--data", tmp_path), "camelyonpatch_level_2_split_train_y.h5")


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path / "data", n=20)
    any_patch = next((data / "train").iterdir()).read_bytes()
    with open(os.path.join(os.fsencode(data / "train"), b"caf\xe9.tif"), "wb") as f:
        f.write(any_patch)
    store = open_dataset(data)
    assert len(store) == 20
    assert store.skipped["reason"].str.contains("not valid UTF-8").sum() == 1
    assert "caf\\xe9.tif" in store.describe()


def test_oversized_files_are_refused_before_decoding(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path / "data", n=20)
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    with open(data / "train" / "sparse.tif", "wb") as f:  # 3 GB that cost no disk
        f.truncate(3 << 30)
    tifffile.imwrite(data / "train" / "bomb.tif", np.zeros((2048, 2048, 3), np.uint8), compression="zlib")
    tifffile.imwrite(data / "train" / "stack.tif", np.zeros((2, 96, 96, 3), np.uint8))
    pd.concat([labels, pd.DataFrame({"id": ["sparse", "bomb", "stack"], "label": 0})]).to_csv(
        data / "train_labels.csv", index=False)
    reasons = dict(open_dataset(data).skipped[["path", "reason"]].values)
    assert reasons["train/sparse.tif"].startswith("file is 3072.0 MB")
    assert "declares 2048x2048 px" in reasons["train/bomb.tif"]
    assert reasons["train/stack.tif"].startswith("2 images in one TIFF")


def test_a_dead_pack_folder_is_removed_by_the_next_open_of_a_current_cache(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path / "data", n=20)
    open_dataset(data)
    dead = cache_dir_for(data) / "pack.tmp-999999"  # no such process: a pack that was killed
    dead.mkdir()
    (dead / "images.npy").write_bytes(b"\0" * 1000)
    assert len(open_dataset(data)) == 20 and not dead.exists()


def test_concurrent_forced_packs_of_one_folder_both_succeed(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path / "data", n=200)
    env = {"PCAM_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "pcam_core", "pack", "--data", str(data), "--force"]
    for _ in range(3):
        procs = [subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, stderr=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _ in results), results
    assert len(open_dataset(data)) == 200


def test_a_corrupt_stats_table_makes_the_cache_rebuild(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path / "data", n=20)
    open_dataset(data)
    stats = cache_dir_for(data) / "pack" / "stats.parquet"
    stats.write_bytes(stats.read_bytes()[:100])
    store = open_dataset(data)  # notices, and packs again instead of failing on the Explore page
    assert len(store.stats) == 20


def test_a_sample_submission_that_cannot_be_read_is_named(demo_dir, tmp_path):
    from pcam_core.models.registry import Classifier

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    (data / "sample_submission.csv").write_text("identifier;label\nabc;0\n")
    ckpt = Classifier.new("base_cnn").save(tmp_path / "c.pt")
    one_line_error(cli("submit", "--checkpoint", ckpt, "--data", data, "--out", tmp_path / "s.csv"),
                   "sample_submission.csv", "id column")


@pytest.mark.slow
def test_a_sample_submission_listing_only_some_test_ids_is_said_out_loud(demo_dir, tmp_path):
    from pcam_core.models.registry import Classifier

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    sample = pd.read_csv(data / "sample_submission.csv", dtype={"id": str})
    sample.head(9).to_csv(data / "sample_submission.csv", index=False)
    ckpt = Classifier.new("base_cnn").save(tmp_path / "c.pt")
    done = cli("submit", "--checkpoint", ckpt, "--data", data, "--out", tmp_path / "s.csv")
    assert done.returncode == 0, done.stderr
    assert "lists 9 of the 60 test patches" in done.stderr and "leaves out 51" in done.stderr
    assert len(pd.read_csv(tmp_path / "s.csv")) == 9


def test_a_symlink_loop_in_train_is_listed_not_fatal(demo_dir, tmp_path):
    data = kaggle_copy(demo_dir, tmp_path / "data", n=20)
    (data / "train" / "loop.tif").symlink_to("loop.tif")
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    pd.concat([labels, pd.DataFrame({"id": ["loop"], "label": [1]})]).to_csv(data / "train_labels.csv",
                                                                            index=False)
    store = open_dataset(data)
    assert len(store) == 20
    reasons = dict(store.skipped[["path", "reason"]].values)
    assert "symbolic links" in reasons["train/loop.tif"]


def pcam_folder(folder: Path, x: np.ndarray, **dataset_options) -> Path:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f.create_dataset("x", data=x, **dataset_options)
    with h5py.File(folder / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=(np.arange(len(x)) % 2).reshape(-1, 1, 1, 1).astype(np.uint8))
    return folder


@pytest.mark.slow
def test_damaged_pcam_image_files_are_named(tmp_path):
    import h5py

    group = tmp_path / "group"
    group.mkdir()
    with h5py.File(group / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f.create_group("x")
    one_line_error(cli("info", "--data", group), "camelyonpatch_level_2_split_train_x.h5", "no dataset `x`")

    x = np.random.default_rng(0).integers(0, 255, (64, 96, 96, 3), dtype=np.uint8)
    damaged = pcam_folder(tmp_path / "damaged", x, compression="gzip", chunks=(8, 96, 96, 3))
    path = damaged / "camelyonpatch_level_2_split_train_x.h5"
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 2000] = bytes(b ^ 0xFF for b in raw[middle:middle + 2000])  # corrupt a chunk
    path.write_bytes(bytes(raw))
    assert cli("info", "--data", damaged).returncode == 0  # the header is fine
    from pcam_core.models.registry import Classifier

    ckpt = Classifier.new("base_cnn").save(tmp_path / "c.pt")
    done = cli("predict", "--checkpoint", ckpt, "--data", damaged, "--split", "train", "--out",
               tmp_path / "p.csv")
    one_line_error(done, "camelyonpatch_level_2_split_train_x.h5 is damaged", "re-download")


@pytest.mark.slow
def test_a_cache_folder_that_is_a_file_and_a_broken_run_config_are_one_line(demo_dir, tmp_path):
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    one_line_error(cli("info", "--data", demo_dir, env={"PCAM_CACHE_DIR": str(blocker)}), str(blocker))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    (run / "last.pt").write_bytes(b"")
    one_line_error(cli("train", "--resume", run), "config.json", "not valid JSON")


def test_a_verdict_store_that_is_not_sqlite_or_is_a_folder_is_one_line(demo_dir, tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("these are my notes, not a database\n" * 50)
    before = text.read_bytes()
    for db in (text, tmp_path):
        done = cli("reviewed-labels", "--data", demo_dir, "--db", db, "--out", tmp_path / "l.csv")
        one_line_error(done, str(db))
    assert text.read_bytes() == before  # nothing written into it
    assert not (tmp_path / "l.csv").exists()
