"""`kit bench` and `kit bench-gpu`: the speed benchmarks."""
import time

import click

from kit.bench.cpu import run_bench
from kit.bench.gpu import DATA, run_bench_gpu
from kit.commands.options import FiniteFloat, friendly, open_spec, say, spec_option
from kit.core.settings import EMBEDDED_LLM


@click.command()
@spec_option
@click.option("--rows", type=click.IntRange(min=1), default=96, show_default=True,
              help="Training rows of the spec to predict (and train on); the spec must have two labels. "
                   "The README's figures: --spec specs/disaster.toml.")
@click.option("--train-steps", type=click.IntRange(min=1), default=6, show_default=True,
              help="Training steps per trainer.")
@click.option("--model", default=EMBEDDED_LLM, show_default=True)
@click.option("--quick", is_flag=True, help="Skip the ablations and the Trainer baseline.")
@click.option("--out", default=None, help="Also write the figures as JSON here.")
@friendly
def bench(spec_path, rows, train_steps, model, quick, out):
    """Measure predict and train speed against the usual way (naive loop, transformers.Trainer)."""
    started = time.time()
    run_bench(open_spec(spec_path), rows, train_steps, model, quick, out)
    say(f"bench done in {time.time() - started:.0f} s")


@click.command("bench-gpu")
@click.option("--config", "configs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A model config JSON (repeatable). Default: configs/qwen2.5-{0.5b,1.5b,7b}.json on a GPU, "
                   "configs/tiny-qwen2.json on a CPU.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps per trainer [default: 20 GPU, 3 CPU].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Training batch size [default: 8 GPU, 4 CPU].")
@click.option("--max-length", type=click.IntRange(min=16), default=512, show_default=True,
              help="Prompt tokens: training inputs are filled to it, prediction inputs cut at it.")
@click.option("--rows", type=click.IntRange(min=1), default=None, help="Rows to predict [default: 2000 GPU, 32 CPU].")
@click.option("--loop-rows", type=click.IntRange(min=1), default=None,
              help="Rows for the slow per-row loop, spread over --rows (it is a rate) [default: 200 GPU, all CPU].")
@click.option("--data", default=DATA, show_default=True, help="CSV with title and abstract columns.")
@click.option("--tokenizer", default=None, type=click.Path(exists=True, file_okay=False),
              help="Tokenizer directory, when the embedded SmolLM2 is not installed.")
@click.option("--peak-tflops", type=FiniteFloat(min=0, min_open=True), default=None,
              help="The device's dense bf16 peak for MFU [default: by GPU name, or measured].")
@click.option("--new-tokens", type=click.IntRange(min=1), default=8, show_default=True, help="max_new_tokens of the seeds' loops.")
@click.option("--no-qlora", is_flag=True, help="Skip the 4-bit (QLoRA) training rows.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write every figure as JSON here.")
@friendly
def bench_gpu(configs, device, steps, batch_size, max_length, rows, loop_rows, data, tokenizer, peak_tflops,
              new_tokens, no_qlora, out):
    """Benchmark the GPU road against transformers.Trainer + peft and model.generate loops.

    In one run on one device, on random-weight models of the real Qwen2.5 shapes (per-row and
    batched model.generate for prediction). Prints the figures and the ratios against the goals.

    CPU dry run: kit bench-gpu --device cpu --config configs/tiny-qwen2.json
    """
    started = time.time()
    run_bench_gpu(configs, device, steps, batch_size, max_length, rows, loop_rows, data, tokenizer,
                  peak_tflops, new_tokens, not no_qlora, out)
    say(f"bench-gpu done in {time.time() - started:.0f} s")
