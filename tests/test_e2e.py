"""End to end with the embedded SmolLM2 through the CLI, as a user runs it, including a SIGKILL
in the middle of `kit train` and of `kit predict`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, SHARED, write_toy_competition
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def kit(cwd, *args, env=None, check=True):
    result = subprocess.run([sys.executable, "-m", "kit", *map(str, args)], cwd=cwd, env=env or ENV,
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


def start(cwd, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "kit", *map(str, args)], cwd=cwd, env=env or ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(process, path, timeout=600):
    deadline = time.time() + timeout
    while not Path(path).exists():
        assert process.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_demo_competition_end_to_end(tmp_path):
    spec = ROOT / "data" / "competition.toml"
    kit(tmp_path, "prepare", "--spec", spec, "--out", "prepared")
    alpaca = json.loads((tmp_path / "prepared" / "paper-medical_alpaca.json").read_text())
    assert len(alpaca) == 480 and set(alpaca[0]) == {"instruction", "input", "output"}
    assert alpaca[0]["input"].startswith("title:") and alpaca[0]["output"] in ("0", "1")
    assert "paper-medical" in json.loads((tmp_path / "prepared" / "dataset_info.json").read_text())
    kit(tmp_path, "train", "--spec", spec, "--max-steps", "2", "--batch-size", "4")
    kit(tmp_path, "train", "--spec", spec, "--target", "Keywords")        # the TF-IDF road: seconds
    out = kit(tmp_path, "predict", "--spec", spec, "--split", "testB").stdout
    assert "predicted 120 rows of testB" in out and "Keywords: 120 rows" in out
    submission = pd.read_csv(tmp_path / "submissions" / "submit.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(ROOT / "data" / "testB.csv", dtype=str)
    assert list(submission.columns) == ["uuid", "Keywords", "label"]
    assert submission["uuid"].tolist() == test["uuid"].tolist()
    assert set(submission["label"]) <= {"0", "1"} and (submission["Keywords"] != "").all()
    abstracts = (test["title"] + " " + test["abstract"]).str.lower()
    assert all(k.lower() in text for ks, text in zip(submission["Keywords"], abstracts) for k in ks.split("; "))
    (run_dir,) = (tmp_path / "runs").glob("paper-medical-smollm2-classify-*")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["train"]["max_steps"] == 2 and (run_dir / "spec.toml").exists()
    assert run["spec"]["fingerprint"] and run["data"]["fingerprint"] and run["base_model"]["fingerprint"]


TRAIN = ["train", "--max-steps", "6", "--batch-size", "4", "--checkpoint-every", "2", "--head", "generate"]


def test_killed_training_resumes_to_the_same_adapter(tmp_path):
    spec = write_toy_competition(tmp_path)
    kit(tmp_path, *TRAIN, "--spec", spec, "--name", "straight")
    process = start(tmp_path, *TRAIN, "--spec", spec, "--name", "killed")
    kill_when(process, tmp_path / "runs" / "killed" / "checkpoint.pt")
    assert not (tmp_path / "runs" / "killed" / "model").exists()
    kit(tmp_path, *TRAIN, "--spec", spec, "--name", "killed", "--resume")
    adapter = "model/adapter/adapter_model.safetensors"
    straight = load_file(tmp_path / "runs" / "straight" / adapter)
    resumed = load_file(tmp_path / "runs" / "killed" / adapter)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert (straight[key] - resumed[key]).abs().max() < 1e-6, key


def test_killed_predict_keeps_the_old_submission_and_resumes(tmp_path):
    spec = write_toy_competition(tmp_path, test_rows=48)
    kit(tmp_path, "train", "--spec", spec, "--max-steps", "1", "--batch-size", "4")
    submit = tmp_path / "submissions" / "submit.csv"
    submit.parent.mkdir()
    submit.write_text("old upload\n")
    env = {**ENV, "KIT_PREDICT_CHUNK": "4"}
    process = start(tmp_path, "predict", "--spec", spec, env=env)
    (run_dir,) = (tmp_path / "runs").glob("toy-smollm2-classify-*")
    progress = run_dir / ".predict-test-score.progress.json"
    kill_when(process, progress)
    assert submit.read_text() == "old upload\n"
    resumed = kit(tmp_path, "predict", "--spec", spec, env=env)
    assert "resuming" in resumed.stderr
    first = (run_dir / "predictions-test.csv").read_text()
    kit(tmp_path, "predict", "--spec", spec, env=env)       # uninterrupted, for comparison
    again = (run_dir / "predictions-test.csv").read_text()
    assert first == again and len(pd.read_csv(submit)) == 48 and not progress.exists()


@pytest.mark.skipif(not (SHARED / "paper" / "testB.csv").exists(), reason="needs ../shared/data/paper")
def test_paper_files_gbk_bom_and_float_ids_give_the_same_ids(tmp_path):
    """The seed challenge's testB re-encoded as GBK with a BOM-ed header, and with float ids."""
    from kit.inputs.data import load_rows
    from kit.inputs.spec import load_spec
    original = (SHARED / "paper" / "testB.csv").read_text(encoding="utf-8")
    (tmp_path / "gbk.csv").write_bytes(b"\xef\xbb\xbf" + original.encode("gb18030"))
    frame = pd.read_csv(SHARED / "paper" / "testB.csv", dtype=str, keep_default_na=False)
    frame["uuid"] = frame["uuid"] + ".0"
    frame.to_csv(tmp_path / "floats.csv", index=False)
    spec_text = (ROOT / "specs" / "paper.toml").read_text().replace("../data/train.csv", str(ROOT / "data" / "train.csv"))
    ids = {}
    for name in ("original", "gbk", "floats"):
        path = SHARED / "paper" / "testB.csv" if name == "original" else tmp_path / f"{name}.csv"
        text = spec_text.replace('testB = "../../shared/data/paper/testB.csv"', f'testB = "{path}"')
        (tmp_path / f"{name}.toml").write_text(text)
        rows, _ = load_rows(load_spec(tmp_path / f"{name}.toml"), "testB")
        ids[name] = rows.ids
        if name == "gbk":
            assert rows.texts == load_rows(load_spec(tmp_path / "original.toml"), "testB")[0].texts
    assert len(ids["original"]) == 2000
    assert ids["gbk"] == ids["original"]
    from kit.inputs.data import id_key  # float ids are kept as written and compare by key
    assert ids["floats"] == [i + ".0" for i in ids["original"]]
    assert [id_key(i) for i in ids["floats"]] == ids["original"]
