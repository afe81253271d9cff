"""Merge one GPU acceptance run (benchmarks/gpu_acceptance.sh) into summary.json and summary.md.

Reads, from the results folder: parts.tsv (one line per part the script ran: name, exit status,
seconds, time limit, command), junit.xml (pytest -m gpu), bench-*.json (kit bench-gpu --out),
measurements/*.json (figures the gpu tests recorded), device.txt and notes.txt. Prints the
summary.md text. Standard library only (no torch import: it runs in a fraction of a second).
Exits 1 when a part failed or a test failed, else 0.

    python benchmarks/gpu_summary.py --out runs/gpu-acceptance --mode gpu --wall-s 412
"""
import argparse
import json
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

BENCH_PARTS = {"bench-0.5b": "bench-0.5b.json", "bench-7b": "bench-7b.json"}


def read_parts(out):
    parts = []
    path = out / "parts.tsv"
    if not path.is_file():
        return parts
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        name, rc, seconds, limit, command = (line.split("\t") + [""] * 5)[:5]
        if rc == "not run":
            status = "not run (the time budget was spent)"
        elif rc == "0":
            status = "ok"
        elif rc in ("124", "137"):
            status = f"timed out after {limit} s"
        else:
            status = f"failed (exit {rc})"
        parts.append({"name": name, "status": status, "exit": None if rc == "not run" else int(rc),
                      "wall_s": round(float(seconds or 0), 1), "limit_s": int(limit or 0), "command": command,
                      "log": f"{name}.log"})
    return parts


def read_junit(path):
    """[{name, status, seconds, message}] per test case; [] when the file is missing or unreadable."""
    if not path.is_file():
        return []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return []
    tests = []
    for case in root.iter("testcase"):
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (element.get("message") or element.text or "").strip().splitlines()
                message = message[0][:300] if message else ""
                break
        tests.append({"name": case.get("name"), "module": case.get("classname"), "status": status,
                      "seconds": round(float(case.get("time") or 0), 2), "message": message})
    return tests


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_bench(out, parts):
    """One entry per bench part that wrote its JSON: every config's figures, goals and skipped rows."""
    bench = []
    ran = {p["name"]: p for p in parts}
    for part, file in BENCH_PARTS.items():
        report = read_json(out / file)
        if report is None:
            if part in ran:
                why = ran[part]["status"] if ran[part]["exit"] is None else f"{file} was not written (see {part}.log)"
                bench.append({"part": part, "file": file, "config": None, "goals": [], "missing": why})
            continue
        for config in report.get("configs", []):
            bench.append({"part": part, "file": file, "config": config["config"], "device": report.get("device"),
                          "versions": report.get("versions"), "options": report.get("options"),
                          "peak_tflops": report.get("peak_tflops"), "peak_source": report.get("peak_source"),
                          "params": config.get("params"), "goals": config.get("goals", []),
                          "skipped": config.get("skipped", []), "ratios": config.get("ratios", {}),
                          "train": config.get("train", []), "predict": config.get("predict", [])})
    return bench


def summarise(out, mode, wall_s, budget_s):
    parts = read_parts(out)
    tests = read_junit(out / "junit.xml")
    bench = read_bench(out, parts)
    measurements = {p.stem: read_json(p) for p in sorted((out / "measurements").glob("*.json"))}
    device = next((b["device"] for b in bench if b.get("device")), None)
    if not device and (out / "device.txt").is_file():
        device = (out / "device.txt").read_text().strip()
    notes = [line for line in (out / "notes.txt").read_text().splitlines() if line.strip()] \
        if (out / "notes.txt").is_file() else []
    if not tests:
        notes.append("no test results: junit.xml is missing or empty (see tests.log)")
    totals = {s: sum(t["status"] == s for t in tests) for s in ("passed", "failed", "error", "skipped")}
    goals = [f"{b['config']}: {line}" for b in bench for line in b["goals"]]
    return {"mode": mode, "device": device or "unknown",
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(wall_s, 1), "budget_s": budget_s, "parts": parts, "tests": tests,
            "test_totals": totals, "bench": bench, "goals": goals, "measurements": measurements, "notes": notes,
            "files": sorted({p.name for p in out.iterdir() if p.is_file()} | {"summary.json", "summary.md"})}


def markdown(summary):
    dry = summary["mode"] == "dry-run"
    title = ("GPU acceptance: dry run on the CPU (tiny config; its figures say nothing about a GPU)" if dry
             else "GPU acceptance")
    lines = [f"# {title}", "", f"device: {summary['device']}"]
    versions = next((b["versions"] for b in summary["bench"] if b.get("versions")), None)
    if versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines += [f"wall time: {summary['wall_s']:.0f} s (budget {summary['budget_s']} s); written {summary['written']}",
              "", "## Parts", "", "| part | status | wall s | command |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['name']} | {p['status']} | {p['wall_s']:.1f} | `{p['command']}` |" for p in summary["parts"]]
    totals = summary["test_totals"]
    lines += ["", f"## GPU tests ({totals['passed']} passed, {totals['failed']} failed, {totals['error']} errors, "
                  f"{totals['skipped']} skipped)", "", "| test | result | s | message |", "| --- | --- | --- | --- |"]
    lines += [f"| {t['name']} | {t['status']} | {t['seconds']:.1f} | {t['message'].replace('|', '/')} |"
              for t in summary["tests"]]
    memory = {k: v for k, v in summary["measurements"].items() if k.startswith("memory-") and v}
    if memory:
        lines += ["", "## Memory: estimate against measured (max_memory_allocated)", "",
                  "| case | estimate GB | measured GB | estimate / measured |", "| --- | --- | --- | --- |"]
        for name, m in memory.items():
            ratio = m["estimate_gb"] / m["measured_gb"] if m.get("measured_gb") else float("nan")
            lines.append(f"| {name[7:]} | {m['estimate_gb']:.2f} | {m['measured_gb']:.2f} | {ratio:.2f} |")
    lines += ["", "## Bench goals", ""]
    for b in summary["bench"]:
        if b.get("missing"):
            lines.append(f"- {b['part']}: {b['missing']}")
            continue
        lines.append(f"- {b['part']} ({b['config']}):")
        lines += [f"  - {line}" for line in b["goals"]]
        lines += [f"  - {line}" for line in b["skipped"]]
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the results folder")
    parser.add_argument("--mode", choices=["gpu", "dry-run"], required=True)
    parser.add_argument("--wall-s", type=float, default=0.0, help="the whole run's wall time")
    parser.add_argument("--budget-s", type=int, default=0, help="the whole run's time budget")
    args = parser.parse_args(argv)
    summary = summarise(args.out, args.mode, args.wall_s, args.budget_s)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    text = markdown(summary)
    (args.out / "summary.md").write_text(text)
    print(text, end="")
    failed = any(p["status"] != "ok" for p in summary["parts"]) or \
        any(t["status"] in ("failed", "error") for t in summary["tests"]) or not summary["tests"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
