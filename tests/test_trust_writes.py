"""Runs you can trust, round two (writes): the kit deletes or replaces only what carries its own
marker (a run folder with the kit's run.json, a state cache it made), never writes over an input
of the command, and a write that fails (full disk, permission, read-only file system, a folder
where a file goes) is one line naming the path, with no temporary file left behind. Each test
failed on the kit before this round."""
import errno
import json
import logging
import os
import pickle
import tempfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from cli import TFIDF, ok, one_line_error, runs_of
from conftest import write_spec, write_toy_competition
from safetensors import SafetensorError

from kit.core import files
from kit.core.errors import KitError, WriteError
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine import states
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.base import MODEL_FILE
from kit.models.embedded import resolve_model
from kit.models.tfidf import TfidfModel
from kit.workflows import blend as ensemble


@pytest.fixture
def trained(here):
    """A toy competition with one trained TF-IDF run named `base`: (spec path, run folder)."""
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF, "--name", "base")
    return spec_path, here / "runs" / "base"


def user_folder(path):
    """A folder of someone's own files, with a marker that must survive."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "marker.txt").write_text("mine")
    (path / "notes").mkdir(exist_ok=True)
    (path / "notes" / "a.txt").write_text("mine too")
    return path


def survived(path):
    return (path / "marker.txt").read_text() == "mine" and (path / "notes" / "a.txt").is_file()


def failing_on(paths, error_number, real):
    """A stand-in for tempfile.mkstemp that fails with error_number inside any of paths."""
    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and any(Path(dir).resolve() == Path(p).resolve() or Path(p).resolve() in Path(dir).resolve().parents
               for p in paths):
            raise OSError(error_number, os.strerror(error_number), str(dir))
        return real(*args, dir=dir, **kwargs)
    return mkstemp


def no_access(*folders):
    """A stand-in for os.access: write access is denied in folders (as for a non-root user on a
    read-only share; root passes every chmod, so the tests deny it here)."""
    real = os.access
    denied = [Path(f).resolve() for f in folders]

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve() in denied:
            return False
        return real(path, mode, *args, **kwargs)
    return access


# -- 1. --name is one folder name; --overwrite replaces only a kit run -----------------------------
@pytest.mark.parametrize("name", ["ABS", "../outside", "a/b", ".", "..", ".hidden"])
def test_a_run_name_is_one_folder_name(here, name):
    spec_path = write_toy_competition(here)
    victim = user_folder(here / "victim")
    (here / "runs").mkdir()
    name = str(victim) if name == "ABS" else name
    out = one_line_error("train", "--spec", spec_path, *TFIDF, "--name", name, "--overwrite")
    assert "one folder name" in out
    assert survived(victim)
    assert not (here / "outside").exists() and not (here / "runs" / "run.json").exists()


def test_overwrite_never_replaces_a_folder_that_is_not_a_kit_run(here):
    spec_path = write_toy_competition(here)
    folder = user_folder(here / "runs" / "mine")
    out = one_line_error("train", "--spec", spec_path, *TFIDF, "--name", "mine", "--overwrite")
    assert "not a kit run folder" in out and "--overwrite replaces only kit runs" in out
    assert survived(folder)
    (folder / "run.json").write_text("[1, 2]")                    # a run.json that is not the kit's
    assert "not a kit run folder" in one_line_error("train", "--spec", spec_path, *TFIDF, "--name", "mine",
                                                    "--overwrite")
    assert survived(folder)


def test_overwrite_still_replaces_a_kit_run(trained):
    spec_path, run = trained
    (run / "extra.txt").write_text("old")
    ok("train", "--spec", spec_path, *TFIDF, "--name", "base", "--seed", "3", "--overwrite")
    assert not (run / "extra.txt").exists() and json.loads((run / "run.json").read_text())["train"]["seed"] == 3


def test_overwrite_never_deletes_through_a_symlink(trained, here):
    spec_path, run = trained
    (here / "runs" / "link").symlink_to(run, target_is_directory=True)
    out = one_line_error("train", "--spec", spec_path, *TFIDF, "--name", "link", "--seed", "3", "--overwrite")
    assert "symbolic link" in out
    assert (run / "run.json").is_file() and (run / "model" / MODEL_FILE).is_file()


# -- 2. kit cache --clear deletes only a cache the kit made -----------------------------------------
def test_cache_clear_refuses_a_folder_without_the_marker(here, monkeypatch):
    folder = user_folder(here / "my-data")
    monkeypatch.setattr(states, "ROOT", folder)                   # KIT_STATE_CACHE=my-data
    out = one_line_error("cache", "--clear")
    assert "not a kit state cache" in out and str(folder) in out
    assert survived(folder)


def fake_shard(root, key="0123456789abcdef"):
    folder = root / key
    folder.mkdir(parents=True)
    (folder / "20250101000000-abcdef12.bin").write_bytes(b"\0" * 4096)
    (folder / "20250101000000-abcdef12.json").write_text("{}")
    return folder


def test_cache_clear_deletes_only_the_kits_shards(here, monkeypatch):
    root = here / "cache"
    states._claim_root(root)                                      # what a first cached pass does
    assert states.is_cache(root)
    shard = fake_shard(root)
    user_folder(root)                                             # someone's files beside the shards
    (shard / "keep.txt").write_text("not a shard")
    monkeypatch.setattr(states, "ROOT", root)
    out = ok("cache", "--clear")
    assert "deleted" in out
    assert not list(shard.glob("*.bin")) and not list(shard.glob("*.json"))
    assert survived(root) and (shard / "keep.txt").is_file()
    assert states.cache_size(root) == 0


def test_the_cache_never_takes_a_users_folder(here):
    folder = user_folder(here / "my-data")
    with pytest.raises(KitError, match="not a kit state cache"):
        states._claim_root(folder)
    assert not states.is_cache(folder) and survived(folder)
    old_cache = here / "old-cache"                                # made before the marker existed
    fake_shard(old_cache)
    states._claim_root(old_cache)
    assert states.is_cache(old_cache)


# -- 3. --out is never an input of the command --------------------------------------------------------
def competition_with_everything(root):
    write_toy_competition(root)
    test = pd.read_csv(root / "test.csv")
    pd.DataFrame({"id": test["id"], "label": 0}).to_csv(root / "sample.csv", index=False)
    pd.DataFrame({"id": test["id"], "label": 1}).to_csv(root / "answers.csv", index=False)
    return write_spec(root, sample='sample = "sample.csv"', extra='[answers]\ntest = "answers.csv"\n')


@pytest.mark.parametrize("out", ["test.csv", "train.csv", "competition.toml", "sample.csv", "answers.csv",
                                 "link-to-test.csv", "./data/../test.csv"])
def test_the_submission_never_overwrites_an_input(here, out):
    spec_path = competition_with_everything(here)
    ok("train", "--spec", spec_path, *TFIDF)
    (here / "link-to-test.csv").symlink_to(here / "test.csv")
    (here / "data").mkdir()
    before = {p.name: p.read_bytes() for p in here.iterdir() if p.is_file()}
    message = one_line_error("predict", "--spec", spec_path, "--out", out)
    assert "an input of this command" in message
    assert {p.name: p.read_bytes() for p in here.iterdir() if p.is_file()} == before
    assert not list(runs_of(here)[0].glob("predictions-*"))       # refused before any prediction work


def test_the_submission_never_goes_into_a_run_folder(trained):
    spec_path, run = trained
    before = (run / "run.json").read_text()
    assert "lies in the run folder" in one_line_error("predict", "--spec", spec_path, "--out", run / "run.json")
    assert "lies in the run folder" in one_line_error("predict", "--spec", spec_path, "--out",
                                                      run / "model" / MODEL_FILE)
    assert (run / "run.json").read_text() == before


def test_a_blended_submission_never_overwrites_an_input(here):
    spec_path = competition_with_everything(here)
    spec = load_spec(spec_path)
    for out in (spec.train, spec.splits["test"], spec_path):
        with pytest.raises(KitError, match="an input of this command"):
            ensemble.blend(spec, ["a", "b"], split="test", out=out, runs_dir=here / "runs")


# -- 9. a full disk --------------------------------------------------------------------------------
def test_a_full_disk_at_the_model_leaves_no_staging_folder(here, monkeypatch):
    spec_path = write_toy_competition(here)

    def full_disk(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "half.npz").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    monkeypatch.setattr(TfidfModel, "save", full_disk)
    out = one_line_error("train", "--spec", spec_path, *TFIDF, "--name", "full")
    run = here / "runs" / "full"
    assert "runs/full/model: cannot write it: No space left on device" in out
    assert not (run / "model.tmp").exists() and not (run / "model").exists()


def test_a_full_disk_in_safetensors_is_one_line_too(here, monkeypatch):
    spec_path = write_toy_competition(here)

    def full_disk(self, directory):          # what save_pretrained raises when the disk fills up
        Path(directory).mkdir(parents=True, exist_ok=True)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(TfidfModel, "save", full_disk)
    out = one_line_error("train", "--spec", spec_path, *TFIDF, "--name", "full")
    assert "runs/full/model: cannot write it: Error while serializing: I/O error: No space left" in out
    assert not (here / "runs" / "full" / "model.tmp").exists()


def test_a_full_disk_at_the_submission_is_one_line_and_leaves_no_temp(trained, here, monkeypatch):
    spec_path, _ = trained
    real = pd.DataFrame.to_csv

    def full_disk(self, path=None, *args, **kwargs):
        if path is not None and Path(path).parent.name == "submissions":
            Path(path).write_text("id,la")                        # half a file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, *args, **kwargs)
    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    out = one_line_error("predict", "--spec", spec_path)
    assert "submissions/submit.csv: cannot write it: No space left on device" in out
    assert list((here / "submissions").iterdir()) == []           # neither the half file nor a temp


def test_atomic_write_names_the_final_path_and_removes_its_temp(here):
    def write(tmp):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    with pytest.raises(WriteError) as caught:
        files.atomic_write(here / "out" / "file.json", write)
    assert str(caught.value) == f"{here / 'out' / 'file.json'}: cannot write it: No space left on device"
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert list((here / "out").iterdir()) == []


# -- 10. read-only folders, a folder where a file goes, a teammate's read-only run --------------------
def test_export_into_a_read_only_folder_is_one_line(trained, here, monkeypatch):
    spec_path, _ = trained
    (here / "ro").mkdir()
    monkeypatch.setattr(os, "access", no_access(here / "ro"))
    out = one_line_error("export", "--spec", spec_path, "--run", "base", "--out", "ro/export")
    assert "cannot write in ro" in out


@pytest.mark.parametrize("error_number", [errno.EACCES, errno.EROFS])
def test_report_and_prepare_into_a_read_only_folder_are_one_line(trained, here, monkeypatch, error_number):
    spec_path, _ = trained
    (here / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", failing_on([here / "ro"], error_number, tempfile.mkstemp))
    reason = os.strerror(error_number)
    assert f"ro/report.html: cannot write it: {reason}" in one_line_error("report", "base", "--out",
                                                                           "ro/report.html")
    assert f"cannot write it: {reason}" in one_line_error("prepare", "--spec", spec_path, "--out", "ro")
    assert list((here / "ro").iterdir()) == []


def test_a_folder_where_the_run_keeps_its_predictions_is_one_line(trained, here):
    spec_path, run = trained
    (run / "predictions-test.csv").mkdir()
    out = one_line_error("predict", "--spec", spec_path)
    assert "predictions-test.csv: is a folder" in out
    assert not (here / "submissions" / "submit.csv").exists()     # refused before the prediction work


def test_a_folder_where_training_writes_a_file_is_one_line(trained, here):
    spec_path, run = trained
    (run / "train_metrics.json").unlink()
    (run / "train_metrics.json").mkdir()                          # the kit's own output path
    out = one_line_error("train", "--spec", spec_path, *TFIDF, "--name", "base")
    assert "train_metrics.json: cannot write it: Is a directory" in out


def test_a_read_only_run_folder_still_predicts(trained, here, monkeypatch, caplog):
    spec_path, run = trained
    caplog.set_level(logging.INFO, logger="kit")
    monkeypatch.setattr(os, "access", no_access(run))
    ok("predict", "--spec", spec_path, "--run", run, "--out", "mine.csv")
    assert len(pd.read_csv(here / "mine.csv")) == 8
    assert not list(run.glob("predict*")) and not list(run.glob(".predict-*"))
    warnings = [line for line in caplog.text.splitlines() if "read-only" in line]
    assert len(warnings) == 1 and str(run) in warnings[0]


def test_a_run_folder_on_a_read_only_file_system_still_predicts(trained, here, monkeypatch, caplog):
    spec_path, run = trained
    caplog.set_level(logging.INFO, logger="kit")
    monkeypatch.setattr(tempfile, "mkstemp", failing_on([run], errno.EROFS, tempfile.mkstemp))
    ok("predict", "--spec", spec_path, "--run", "base", "--out", "mine.csv")
    assert len(pd.read_csv(here / "mine.csv")) == 8
    assert not list(run.glob("predict*")) and not list(run.glob(".predict-*"))
    assert "Read-only file system" in caplog.text and "Traceback" not in caplog.text


# -- 11. a foreign run.json under runs/ --------------------------------------------------------------
def test_a_foreign_run_json_never_breaks_predict(trained, here):
    spec_path, _ = trained
    for name, content in (("a-list", "[1, 2]"), ("spec-null", '{"key": "x", "spec": null}'),
                          ("bad-json", "{"), ("spec-list", '{"key": "x", "spec": [1]}')):
        (here / "runs" / name).mkdir()
        (here / "runs" / name / "run.json").write_text(content)
    (here / "runs" / "a-folder" / "run.json").mkdir(parents=True)
    ok("predict", "--spec", spec_path)
    assert len(pd.read_csv(here / "submissions" / "submit.csv")) == 8


# -- 12. pickled weights in a run folder -------------------------------------------------------------
class Marker:
    """A pickle payload: loading it creates a file. Nothing may ever load it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def craft_transformer_run(run, spec_path, lora_r, marker):
    """Replace the run's model with a transformer model whose weights are a pickle only."""
    model = run / "model"
    for path in sorted(model.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    task = Task.from_spec(load_spec(spec_path))
    state = {"kind": "transformer", "model_id": "crafted", "task": asdict(task),
             "args": asdict(ModelArgs(model="someone/base", lora_r=lora_r)), "train_args": asdict(TrainArgs()),
             "base_path": "someone/base"}
    (model / MODEL_FILE).write_text(json.dumps(state))
    weights = model / ("adapter" if lora_r else "model")
    weights.mkdir()
    name = "adapter_model.bin" if lora_r else "pytorch_model.bin"
    (weights / name).write_bytes(pickle.dumps(Marker(marker)))
    (weights / ("adapter_config.json" if lora_r else "config.json")).write_text("{}")
    return name


@pytest.mark.parametrize("lora_r", [8, 0])
def test_pickled_weights_in_a_run_folder_are_refused_in_one_line(trained, here, lora_r):
    spec_path, run = trained
    marker = here / "pwned"
    name = craft_transformer_run(run, spec_path, lora_r, marker)
    out = one_line_error("predict", "--spec", spec_path, "--run", "base")
    assert name in out and "only safetensors weights are loaded" in out
    assert not marker.exists()


def test_a_base_model_with_pickled_weights_only_is_refused(here):
    base = here / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "pytorch_model.bin").write_bytes(pickle.dumps(Marker(here / "pwned")))
    with pytest.raises(KitError, match="only safetensors weights are loaded"):
        resolve_model(str(base))
    (base / "model.safetensors").write_bytes(b"")                  # safetensors beside it: transformers takes those
    assert resolve_model(str(base)) == str(base.resolve())
    assert not (here / "pwned").exists()


def test_a_blend_name_is_one_folder_name(tmp_path):
    from kit.workflows.blend import _blend_folder
    with pytest.raises(KitError, match="not a path"):
        _blend_folder(tmp_path / "runs", "../outside", "key")


def test_run_json_records_the_kit_version_commit_and_command_line(here, toy):
    import json as _json

    from kit import __version__
    ok("train", "--spec", toy, *TFIDF, "--name", "recorded", "--kd-temperature", 2.0)
    made = _json.loads((here / "runs" / "recorded" / "run.json").read_text())["kit"]
    assert made["version"] == __version__ and isinstance(made["command"], list)
    assert made["commit"] is None or len(made["commit"]) == 40
