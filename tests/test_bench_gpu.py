"""`kit bench-gpu` end to end on the CPU: the tiny Qwen2 config, 2 steps of 4 rows, 8 rows to predict."""
import json
import math
from pathlib import Path

import pytest
from conftest import SHARED

DATA = SHARED / "paper" / "testB.csv"
DEMO = Path(__file__).resolve().parents[1] / "data" / "testB.csv"      # what the kit ships: its default


@pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} is missing")
def test_bench_gpu_on_cpu_reports_every_row(tmp_path, smol_tokenizer_dir, capsys):
    from kit.bench.gpu import CPU_CONFIG, has_bitsandbytes, run_bench_gpu
    out = tmp_path / "bench.json"
    report = run_bench_gpu([CPU_CONFIG], device="cpu", steps=2, batch_size=4, max_length=128, rows=8,
                           data=str(DATA), tokenizer=smol_tokenizer_dir, peak_tflops=0.1, out=str(out))
    (result,) = report["configs"]
    expected = ["transformers.Trainer + peft", "kit train"]
    if has_bitsandbytes():
        expected += ["transformers.Trainer + peft, QLoRA 4-bit", "kit train, QLoRA 4-bit"]
    assert [r["path"] for r in result["train"]] == expected, result["skipped"]
    for row in result["train"]:
        assert row["tokens_per_s"] > 0 and row["samples_per_s"] > 0 and row["mfu"] > 0 and row["peak_mb"] > 0
        assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_end"])
        assert row["tokens_per_row"] == 128 + 2     # filled to max_length, plus the answer and end-of-turn
    assert [r["rows"] for r in result["predict"]] == [8, 8, 8, 8]
    assert all(r["rows_per_s"] > 0 and r["peak_mb"] > 0 for r in result["predict"])
    assert result["ratios"]["train_tokens_per_s"] > 0 and result["ratios"]["score_rows_per_s"] > 0
    assert len(result["goals"]) == 3
    assert json.loads(out.read_text())["configs"][0]["config"] == "tiny-qwen2"
    printed = capsys.readouterr().out
    assert "kit predict --mode score" in printed and "goals" in printed


def test_kit_rows_are_timed_by_the_loops_step_callback(tmp_path, smol_tokenizer_dir):
    """The bench times the kit's steps through fit's on_step (no patched library functions):
    2 steps give the second one timed, and the training loop was reached."""
    from kit.bench.gpu import CPU_CONFIG, run_bench_gpu
    report = run_bench_gpu([CPU_CONFIG], device="cpu", steps=2, batch_size=4, max_length=64, rows=4,
                           data=str(DEMO), tokenizer=smol_tokenizer_dir, peak_tflops=0.1, qlora=False)
    kit_row = next(r for r in report["configs"][0]["train"] if r["path"] == "kit train")
    assert kit_row["timed_steps"] == 1 and kit_row["note"] == ""


def test_the_device_setting_pins_the_cpu_even_where_torch_sees_a_gpu(monkeypatch):
    import torch

    from kit.engine.device import cuda_info
    from kit.models.transformer import _device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_info("cpu") is None and _device("cpu") == "cpu"


def test_the_loop_calls_on_step_at_each_step_and_at_the_end(tiny_llama, toy):
    from kit.core.settings import ModelArgs, TrainArgs
    from kit.inputs.data import load_rows
    from kit.inputs.spec import load_spec
    from kit.inputs.tasks import Task
    from kit.models.registry import make_model
    spec = load_spec(toy)
    rows = load_rows(spec, "train")[0].subset(range(16))
    model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama, lora_layers=0),
                       TrainArgs(max_steps=3, batch_size=4, checkpoint_every=0))
    calls = []
    model.on_step = calls.append
    model.fit(rows)
    assert calls == [0, 1, 2, 3]


def test_bad_input_is_one_line_and_exit_2(tmp_path, smol_tokenizer_dir):
    from click.testing import CliRunner

    from kit.commands.main import main
    result = CliRunner().invoke(main, ["bench-gpu", "--device", "cpu", "--data", str(tmp_path / "missing.csv"),
                                       "--tokenizer", smol_tokenizer_dir])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "missing.csv" in result.output
