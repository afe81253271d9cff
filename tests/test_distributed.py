"""Data parallel through the standard launcher: `torchrun --nproc_per_node 2 -m kit ...` on two
CPU ranks (gloo). The same global batch and seed must give the same adapter as one process,
predict must write the same submission, CV folds side by side the same OOF, and a killed
2-rank training must resume to the same adapter."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, write_toy_competition
from safetensors.torch import load_file

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "--max-steps", "4", "--batch-size", "8", "--lora-dropout", "0", "--lora-layers", "0",
         "--checkpoint-every", "0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kit(cwd, *args, ranks=1, check=True):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                 "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "kit"]
                if ranks > 1 else [sys.executable, "-m", "kit"])
    result = subprocess.run(launcher + [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def adapter(root, name):
    return load_file(root / "runs" / name / "model" / "adapter" / "adapter_model.safetensors")


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture
def competition(tmp_path, tiny_llama):
    spec = write_toy_competition(tmp_path, rows=40, test_rows=12)
    return tmp_path, ["--spec", spec, "--model", tiny_llama]


@pytest.mark.parametrize("head", ["classify", "generate"])
def test_two_ranks_train_the_same_adapter_as_one_process(competition, head):
    root, common = competition
    kit(root, *TRAIN, *common, "--head", head, "--name", "one")
    out = kit(root, *TRAIN, *common, "--head", head, "--name", "two", ranks=2)
    difference = max_difference(adapter(root, "one"), adapter(root, "two"))
    print(f"{head}: max abs difference between the 1-process and 2-rank adapters: {difference:.2e}")
    assert difference < 1e-5
    logs = [json.loads((root / "runs" / n / "train_metrics.json").read_text())["loss_log"] for n in ("one", "two")]
    np.testing.assert_allclose(logs[0], logs[1], rtol=1e-5)
    assert json.loads((root / "runs" / "two" / "run.json").read_text())["world_size"] == 2
    assert out.stdout.count("trained runs/two") == 1          # rank 0 alone reports (and writes)


def test_two_ranks_predict_the_same_submission(competition):
    root, common = competition
    kit(root, *TRAIN, *common, "--name", "one")
    kit(root, "predict", "--spec", common[1], "--run", "one", "--out", "one.csv")
    single = (root / "runs" / "one" / "predictions-test.csv").read_text()
    kit(root, "predict", "--spec", common[1], "--run-name", "one", "--out", "two.csv", ranks=2)
    assert (root / "one.csv").read_text() == (root / "two.csv").read_text()
    a, b = (pd.read_csv(root / "runs" / "one" / "predictions-test.csv"), pd.read_csv(pd.io.common.StringIO(single)))
    np.testing.assert_allclose(a[["p_0", "p_1"]], b[["p_0", "p_1"]], atol=1e-6)


def test_two_ranks_run_cv_folds_side_by_side(competition):
    root, common = competition
    cv = ["cv", *common, "--max-steps", "2", "--batch-size", "8", "--folds", "3", "--no-baseline"]
    kit(root, *cv, "--name", "seq")
    kit(root, *cv, "--name", "par", ranks=2)
    seq, par = (pd.read_csv(root / "runs" / n / "oof.csv") for n in ("seq", "par"))
    assert seq[["id", "true", "pred", "fold"]].equals(par[["id", "true", "pred", "fold"]])
    np.testing.assert_allclose(seq[["p_0", "p_1"]], par[["p_0", "p_1"]], atol=1e-5)   # threads: 2 vs 1 per rank
    scores = [json.loads((root / "runs" / n / "cv_scores.json").read_text()) for n in ("seq", "par")]
    assert scores[0]["f1"] == scores[1]["f1"] and scores[0]["per_fold"] == scores[1]["per_fold"]


def test_a_killed_two_rank_training_resumes_to_the_same_adapter(competition):
    root, common = competition
    long = ["train", *common, "--max-steps", "300", "--batch-size", "8", "--lora-dropout", "0", "--lora-layers", "0",
            "--checkpoint-every", "100"]
    kit(root, *long, "--name", "straight", ranks=2)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "kit", *map(str, long),
                                "--name", "killed"], cwd=root, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = root / "runs" / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists():
        assert process.poll() is None and time.time() < deadline, "finished before it could be killed"
        time.sleep(0.02)
    # the launcher starts each rank in a session of its own: kill the ranks, then the launcher
    import psutil
    for child in psutil.Process(process.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (root / "runs" / "killed" / "model").exists()
    assert checkpoint.exists()
    out = kit(root, *long, "--name", "killed", "--resume", ranks=2)
    assert "resuming at step" in out.stderr
    assert max_difference(adapter(root, "straight"), adapter(root, "killed")) < 1e-6


def test_accelerate_launch_trains_the_same_adapter(competition):
    """accelerate's launcher (multi-process, no GPU: it falls back to gloo ranks) runs the same code."""
    root, common = competition
    kit(root, *TRAIN, *common, "--name", "one")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m", "kit"]
    result = subprocess.run(launcher + [str(a) for a in (*TRAIN, *common, "--name", "acc")], cwd=root, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "runs" / "acc" / "run.json").read_text())["world_size"] == 2
    assert max_difference(adapter(root, "one"), adapter(root, "acc")) < 1e-5
