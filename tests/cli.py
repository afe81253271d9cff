"""The command line as the trust tests drive it: a verb's exit code and output, and the two
outcomes they check (it worked; it is one line starting with `error: ` and exit 2)."""
from pathlib import Path

from click.testing import CliRunner

from kit.commands.main import main

TFIDF = ["--model", "tfidf"]


def kit(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return result.exit_code, result.output


def ok(*args):
    code, output = kit(*args)
    assert code == 0, output
    return output


def one_line_error(*args):
    code, output = kit(*args)
    assert code == 2 and output.startswith("error: ") and output.count("\n") == 1, output
    return output


def runs_of(root):
    """The kit run folders under root/runs."""
    return sorted(p for p in (Path(root) / "runs").iterdir() if (p / "run.json").is_file())
