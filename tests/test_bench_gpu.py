"""`kit bench-gpu` end to end on the CPU: the tiny Qwen2 config, 2 steps of 4 rows, 8 rows to predict."""
import json
import math

import pytest

from conftest import SHARED

DATA = SHARED / "paper" / "testB.csv"


@pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} is missing")
def test_bench_gpu_on_cpu_reports_every_row(tmp_path, smol_tokenizer_dir, capsys):
    from kit.bench_gpu import CPU_CONFIG, has_bitsandbytes, run_bench_gpu
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
