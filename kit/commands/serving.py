"""`kit serve` and `kit export`: a trained run over HTTP, or as a plain transformers directory."""
import os
from pathlib import Path

import click

from kit.commands.options import RUNS_DIR, TRUST_REMOTE_CODE, FiniteFloat, friendly, open_spec, say, spec_option
from kit.core.errors import KitError
from kit.core.logs import log
from kit.engine import inference as predict
from kit.inputs.spec import load_spec
from kit.outputs.export import EXPORT_DTYPES, export_run
from kit.outputs.serve import bind, create_app, is_loopback, run_server
from kit.runs.folder import trained_run
from kit.workflows.predict import load_predictor

API_KEY_ENV = "KIT_API_KEY"


@click.command("serve")
@spec_option
@click.option("--run", "run_name", default=None,
              help="Run folder name or path (default: the latest run trained on this spec).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens it to the network (set --api-key then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar=API_KEY_ENV, show_envvar=True, default=None,
              help="Require 'Authorization: Bearer <key>' on every /v1 request.")
@click.option("--batch-window-ms", type=FiniteFloat(0, 1000), default=10.0, show_default=True,
              help="How long the first waiting request waits for others to share its batch.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Rows per predict call.")
@click.option("--mode", type=click.Choice(["score", "generate"]), default="score", show_default=True,
              help="Chat completions: score (the most probable label) or generate (a generate-head run "
                   "answers greedily; an answer that is not a label falls back to the scores).")
@click.option("--allow-spec-change", is_flag=True, help="Serve a run trained on another version of the spec.")
@click.option("--trust-remote-code", is_flag=True,
              help="Let the base model's own Python code run (ChatGLM2/3). Taken from this command line only.")
@RUNS_DIR
@friendly
def serve(spec_path, run_name, host, port, api_key, batch_window_ms, max_batch, mode, allow_spec_change,
          trust_remote_code, runs_dir):
    """Serve a trained run over HTTP, OpenAI-compatible: /v1/models, /v1/chat/completions, /v1/classify."""
    if api_key is None and os.environ.get(API_KEY_ENV) is not None:
        api_key = os.environ[API_KEY_ENV]       # click reads an empty variable as unset: no auth at all
    if api_key is not None and not api_key.strip():
        raise KitError(f"--api-key (or {API_KEY_ENV}) is empty: give a key, or leave it unset for no auth")
    spec = load_spec(spec_path)
    if spec.shape == "number" or spec.several_labels:
        what = "several label columns" if spec.several_labels else "a number task"
        raise KitError(f"{spec.path}: kit serve answers with one label per row; {what} (metric {spec.metric}) is "
                       "predicted with kit predict")
    run = trained_run(spec, run_name, allow_spec_change, Path(runs_dir))
    sock = bind(host, port)
    # once, before the first request: the full-train model, else the fold ensemble `kit predict` uses
    model, used = load_predictor(run, "auto", trust_remote_code)
    # each request's rows are new: the full pass with the prefix KV cache, nothing written to the
    # frozen-state cache per request
    model.without_state_cache()
    predict.PROGRESS = False                                   # no progress bar per request
    template = run.config.get("spec", {}).get("resolved", {}).get("input_template", spec.input_template)
    app = create_app(model, run.name, spec.labels, api_key, batch_window_ms, max_batch, mode, template)
    shown = f"[{host}]" if ":" in host else host
    what = "" if used == [str(run.model_dir)] else f", the average of its {len(used)} fold models"
    log(f"serve: run {run.name}{what} at http://{shown}:{sock.getsockname()[1]}/v1 "
        f"(labels {', '.join(spec.labels)}; batches of up to {max_batch} rows within {batch_window_ms:g} ms; "
        f"{'API key required' if api_key else 'no API key'})")
    if not api_key and not is_loopback(host):
        log(f"serve: warning: listening on {host} without --api-key: anyone who can reach it can use it")
    run_server(app, sock)


@click.command("export")
@spec_option
@click.option("--run", default=None, help="Run folder name or path (default: the latest run trained on this spec).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="The folder to write (a plain transformers model directory).")
@click.option("--force", is_flag=True, help="Replace --out when it exists and is not empty.")
@click.option("--allow-spec-change", is_flag=True, help="Export a run trained on another version of the spec.")
@click.option("--dtype", type=click.Choice(list(EXPORT_DTYPES)), default="trained", show_default=True,
              help="The weights' dtype: the one the run trained in, or fp32/bf16/fp16 (half the size; "
                   "probabilities then differ from kit predict's by rounding).")
@TRUST_REMOTE_CODE
@RUNS_DIR
@friendly
def export(spec_path, run, out, force, allow_spec_change, dtype, trust_remote_code, runs_dir):
    """Export a trained run for serving engines: LoRA merged, tokenizer, prompt format, vLLM commands."""
    info = export_run(open_spec(spec_path), out, run, force, trust_remote_code, runs=Path(runs_dir),
                      allow_spec_change=allow_spec_change, dtype=dtype)
    serve = info["serve"]
    say(f"exported run {info['run']['name']} to {out} ({info['task']['head']} head, {info['run']['dtype']}, "
         f"{'LoRA merged' if info['run']['merged'] else 'full fine-tune'}); prompt and labels: {Path(out) / 'README.md'}")
    say(f"serve with vLLM (not run here): {serve['merged']}")
    if "merged_old_vllm" in serve:
        say(f"  vLLM < 0.10.1: {serve['merged_old_vllm']}")
    if "adapter" in serve:
        say(f"  or the unmerged adapter: {serve['adapter']}")
