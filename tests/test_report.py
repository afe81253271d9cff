"""`kit runs` and `kit report`: the data behind every plot against hand-computed cases, the
leaderboard over real TF-IDF run folders of two specs, and the HTML page (every section, nothing
fetched from the network; a Chromium screenshot when Chromium is installed)."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_spec, write_toy_competition

from kit.commands.main import main
from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.spec import load_spec
from kit.outputs import report as kr
from kit.workflows.cv import cross_validate
from kit.workflows.fit import train_run
from kit.workflows.predict import predict_split

CHROMIUM = Path("/usr/bin/chromium")


# -- the data behind each plot, by hand -----------------------------------------------------------

def test_confusion_counts_by_hand():
    truth = ["a", "a", "b", "b", "b", "c"]
    predicted = ["a", "b", "b", "b", "c", "a"]
    # rows: true a, b, c; columns: predicted a, b, c
    assert kr.confusion_counts(truth, predicted, ["a", "b", "c"]) == [[1, 1, 0], [0, 2, 1], [1, 0, 0]]
    assert kr.confusion_counts(["0"], ["0"], ["0", "1"]) == [[1, 0], [0, 0]]     # absent labels count 0


def test_decide_at_keeps_generated_answers():
    labels = ["0", "1"]
    relabelled = kr.decide_at(0.3, [0.35, 0.2, 0.9, 0.1], ["0", "0", "0", "1"],
                              ["tfidf", "tfidf", "generate", "generate"], labels)
    assert relabelled == ["1", "0", "0", "1"]           # parsed answers keep their label


def test_threshold_curve_by_hand():
    # P sorted: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg). Positive when P >= t:
    #   t=0.10 -> 4 predicted, 2 right: precision 1/2, recall 1, F1 2/3
    #   t=0.35 -> 3 predicted, 2 right: precision 2/3, recall 1, F1 0.8
    #   t=0.40 -> 2 predicted, 1 right: precision 1/2, recall 1/2, F1 0.5
    #   t=0.80 -> 1 predicted, 1 right: precision 1, recall 1/2, F1 2/3
    curve = kr.threshold_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert curve["threshold"] == pytest.approx([0.1, 0.35, 0.4, 0.8])
    assert curve["precision"] == pytest.approx([1 / 2, 2 / 3, 1 / 2, 1])
    assert curve["recall"] == pytest.approx([1, 1, 1 / 2, 1 / 2])
    assert curve["f1"] == pytest.approx([2 / 3, 0.8, 0.5, 2 / 3])


def test_roc_points_by_hand():
    # descending P: pos, neg, pos, neg -> corners (0,0) (0,.5) (.5,.5) (.5,1) (1,1); of the 4
    # (pos, neg) pairs, 3 are ordered right: AUC 0.75
    points = kr.roc_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert list(zip(points["fpr"], points["tpr"])) == [(0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1)]
    assert points["auc"] == pytest.approx(0.75)
    assert kr.roc_points([1, 1], [0.2, 0.9]) is None                    # one class: no curve


def test_calibration_bins_by_hand():
    # 10 bins of width 0.1, (lo, hi]: 0.05 -> bin 0; 0.15 and 0.5 (on the edge) -> bins 1 and 4;
    # 0.55 -> bin 5; 0.95 -> bin 9
    probs = [0.05, 0.15, 0.5, 0.55, 0.95]
    outcome = [0, 1, 0, 1, 1]
    result = kr.calibration_bins(outcome, probs, bins=10)
    counts = [b["count"] for b in result["bins"]]
    assert counts == [1, 1, 0, 0, 1, 1, 0, 0, 0, 1]
    filled = [b for b in result["bins"] if b["count"]]
    assert [b["mean_predicted"] for b in filled] == pytest.approx([0.05, 0.15, 0.5, 0.55, 0.95])
    assert [b["observed"] for b in filled] == [0, 1, 0, 1, 1]
    assert result["bins"][2]["observed"] is None
    # ECE: mean |observed - predicted| = (0.05 + 0.85 + 0.5 + 0.45 + 0.05) / 5
    assert result["ece"] == pytest.approx(1.9 / 5)


def test_calibration_bins_match_scikit_learn():
    from sklearn.calibration import calibration_curve
    rng = np.random.default_rng(0)
    probs = rng.random(300)
    outcome = (rng.random(300) < probs).astype(int)
    observed, predicted = calibration_curve(outcome, probs, n_bins=7)
    filled = [b for b in kr.calibration_bins(outcome, probs, bins=7)["bins"] if b["count"]]
    assert [b["observed"] for b in filled] == pytest.approx(observed.tolist())
    assert [b["mean_predicted"] for b in filled] == pytest.approx(predicted.tolist())


def test_confident_mistakes_are_ordered_by_confidence_ties_in_file_order():
    labels = ["0", "1"]
    ids = ["a", "b", "c", "d", "e"]
    truth = ["1", "0", "1", "0", "1"]
    predicted = ["0", "0", "0", "1", "0"]          # a, c, d, e are wrong; b is right
    probs = np.array([[0.7, 0.3], [0.99, 0.01], [0.9, 0.1], [0.3, 0.7], [0.9, 0.1]])
    wrong = kr.confident_mistakes(ids, truth, predicted, probs, labels)
    assert [w["id"] for w in wrong] == ["c", "e", "a", "d"]      # 0.9, 0.9 (tie: file order), 0.7, 0.7
    assert wrong[0] == {"id": "c", "true": "1", "predicted": "0", "confidence": 0.9, "p_true": 0.1}
    assert [w["id"] for w in kr.confident_mistakes(ids, truth, predicted, probs, labels, limit=2)] == ["c", "e"]


def test_shift_statistic_by_hand(monkeypatch):
    a, b = [0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6]
    # empirical CDFs at 0.2: a 2/4, b 0 -> gap 0.5; nowhere larger
    assert kr.ks_statistic(a, b) == pytest.approx(0.5)
    assert kr.ks_statistic(a, a) == 0
    assert kr.ks_statistic([0.1, 0.2], [0.8, 0.9]) == 1
    result = kr.shift_statistic(a, b)
    assert result["ks"] == pytest.approx(0.5) and result["method"] == "scipy.stats.ks_2samp"
    assert not result["shifted"] and result["pvalue"] > kr.SHIFT_P       # a large gap on 4 rows is not evidence
    assert kr.shift_statistic(a * 50, b * 50)["shifted"]                 # the same gap on 200 rows is
    assert result["oof_mean"] == pytest.approx(0.25) and result["other_mean"] == pytest.approx(0.45)
    assert not kr.shift_statistic(a, a)["shifted"]
    ten = [i / 10 for i in range(1, 11)]
    # one of ten rows moved from 0.5 to 0.55: the CDFs differ by 1/10 on [0.5, 0.55), the threshold
    assert kr.ks_statistic(ten, ten[:4] + [0.55] + ten[5:]) == pytest.approx(0.1)
    rng = np.random.default_rng(1)
    x, y = rng.random(200), rng.random(150) ** 1.3
    assert kr.ks_statistic(x, y) == pytest.approx(kr.shift_statistic(x, y)["ks"])     # same as scipy's
    monkeypatch.setitem(sys.modules, "scipy.stats", None)       # scipy missing: our own statistic
    fallback = kr.shift_statistic(a, b)
    assert fallback["ks"] == pytest.approx(0.5) and fallback["pvalue"] is None and "scipy" in fallback["method"]


def test_loss_curves_from_folds_and_full_training(tmp_path):
    assert kr.loss_curves(tmp_path) == {}
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "fold-1.json").write_text(json.dumps({"stats": {"loss_log": [2.0, 1.5]}}))
    (tmp_path / "cv" / "fold-0.json").write_text(json.dumps({"stats": {"train_seconds": 1}}))     # none logged
    (tmp_path / "cv" / "fold-2.json").write_text("{broken")
    (tmp_path / "train_metrics.json").write_text(json.dumps({"loss_log": [3, 2, 1]}))
    assert kr.loss_curves(tmp_path) == {"fold 2": [2.0, 1.5], "full train": [3.0, 2.0, 1.0]}


# -- real run folders: TF-IDF runs of two specs ------------------------------------------------------

def _three_class(directory):
    """A 3-class toy competition (labels a/b/c by topic) with another spec name."""
    directory = Path(directory)
    topics = {"a": ["cat", "dog", "horse"], "b": ["stock", "tax", "bank"], "c": ["rain", "snow", "wind"]}
    lines = ["id,text,label"] + [f"{i},the {topics[label][i % 3]} story {i},{label}"
                                 for i, label in enumerate("abc" * 8)]
    (directory / "train.csv").write_text("\n".join(lines) + "\n")
    (directory / "test.csv").write_text("id,text\n1,the cat\n2,the rain\n3,a tax\n")
    return write_spec(directory, name="topics", labels='["a", "b", "c"]')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/ with: toy (binary) TF-IDF runs under two training seeds (one trained and predicted),
    a copy with a hand-set low score, a copy without CV scores, a 3-class run of another spec,
    and a broken folder."""
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    (root / "toy").mkdir()
    (root / "topics").mkdir()
    toy = load_spec(write_toy_competition(root / "toy"))
    lines = toy.train.read_text().splitlines()
    for row in (1, 6):          # two mislabelled rows, so the OOF rows hold confident mistakes
        lines[row] = lines[row][:-1] + str(1 - int(lines[row][-1]))
    toy.train.write_text("\n".join(lines) + "\n")
    topics = load_spec(_three_class(root / "topics"))
    for seed in (0, 1):
        cross_validate(toy, ModelArgs(model="tfidf"), TrainArgs(seed=seed), folds=3, runs=runs)
    directory, _ = train_run(toy, ModelArgs(model="tfidf"), TrainArgs(seed=0), runs=runs)
    predict_split(toy, "test", run=directory.name, out=root / "submit.csv", runs=runs)
    cross_validate(topics, ModelArgs(model="tfidf"), TrainArgs(), folds=3, runs=runs)
    low = runs / "toy-low"
    shutil.copytree(directory, low)
    scores = json.loads((low / "cv_scores.json").read_text())
    scores["f1"] = 0.01
    (low / "cv_scores.json").write_text(json.dumps(scores))
    shutil.copytree(directory, runs / "toy-unscored")
    (runs / "toy-unscored" / "cv_scores.json").unlink()
    (runs / "broken").mkdir()
    (runs / "broken" / "run.json").write_text("{not json")
    (runs / "toy-table.md").write_text("| a table kit cv saved |\n")      # files beside runs are not runs
    return {"root": root, "runs": runs, "toy": toy, "topics": topics, "trained": directory}


def _kit(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_runs_shows_one_table_per_spec_best_first(runs):
    result = _kit("runs", "--runs-dir", runs["runs"])
    assert result.exit_code == 0, result.output
    tables = result.stdout.strip().split("\n\n")
    assert len(tables) == 2
    toy = next(t for t in tables if t.startswith("spec toy "))
    assert next(t for t in tables if t.startswith("spec topics ")).count("topics-tfidf-") == 1
    assert "macro_f1" in next(t for t in tables if t.startswith("spec topics "))
    rows = toy.splitlines()[3:]
    names = [row.split()[1] for row in rows]
    assert names[-2:] == ["toy-low", "toy-unscored"]            # the low score, then the unscored run
    assert rows[-1].startswith("-") and rows[0].startswith("1 ")
    scores = [float(row.split()[5]) for row in rows[:-1]]
    assert scores == sorted(scores, reverse=True)
    trained = next(row for row in rows if row.split()[1] == runs["trained"].name)
    assert "test (" in trained                                   # a submission was written from it
    assert "skipped" in result.stderr and "broken" in result.stderr and "toy-table" not in result.stderr


def test_runs_json_and_filters(runs):
    result = _kit("runs", "--runs-dir", runs["runs"], "--json")
    data = json.loads(result.stdout)
    assert {g["spec"]["name"] for g in data["groups"]} == {"toy", "topics"}
    toy = next(g for g in data["groups"] if g["spec"]["name"] == "toy")
    assert toy["metric"] == "f1" and [r["name"] for r in toy["runs"]][-2:] == ["toy-low", "toy-unscored"]
    trained = next(r for r in toy["runs"] if r["name"] == runs["trained"].name)
    assert list(trained["predicted"]) == ["test"] and trained["train_seconds"] is not None
    assert trained["folds"] == 3 and trained["fold_std"] is not None and trained["tuned_threshold"] is not None
    assert any("broken" in s for s in data["skipped"])
    by_name = json.loads(_kit("runs", "--runs-dir", runs["runs"], "--json", "--spec", "topics").stdout)
    assert [g["spec"]["name"] for g in by_name["groups"]] == ["topics"]
    by_file = json.loads(_kit("runs", "--runs-dir", runs["runs"], "--json", "--spec", runs["toy"].path).stdout)
    assert [g["spec"]["name"] for g in by_file["groups"]] == ["toy"]
    none = _kit("runs", "--runs-dir", runs["runs"], "--model", "smollm2")
    assert "no runs in" in none.stdout and "match the filters" in none.stdout
    assert len(json.loads(_kit("runs", "--runs-dir", runs["runs"], "--json", "--model", "tfidf").stdout)["groups"]) == 2


def test_runs_on_a_missing_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["runs", "--runs-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no such runs folder" in result.output


SECTIONS = ("folds", "confusion", "threshold", "roc", "calibration", "loss", "shift", "wrong")


def _ids(page):
    return set(re.findall(r'id="([^"]+)"', page))


def _assert_offline(page):
    """Nothing the page loads or links to leaves the file: no external src/href, no script."""
    for value in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert "http" not in value and not value.startswith("//"), value
        assert value.startswith(("#", "data:image/png;base64,")), value
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_report_has_every_section_and_no_external_url(runs):
    out = runs["root"] / "reports" / "report.html"
    result = _kit("report", runs["trained"].name, "--runs-dir", runs["runs"], "--out", out)
    assert result.exit_code == 0, result.output
    assert f"report: {out}" in result.stdout
    page = out.read_text()
    assert {"leaderboard", "run-1"} | {f"run-1-{s}" for s in SECTIONS} <= _ids(page)
    for heading in ("Leaderboard", "Per-fold scores", "Confusion matrix", "ROC curve", "Calibration",
                    "Training loss", "Most confidently wrong OOF rows"):
        assert f">{heading}</h" in page
    _assert_offline(page)
    assert page.count("data:image/png;base64,") >= 5           # confusion, threshold, ROC, calibration, shift
    assert "no loss log recorded" in page                       # TF-IDF logs no loss
    assert "KS " in page and "scipy.stats.ks_2samp" in page
    confusion = page[page.index('id="run-1-confusion"'):page.index('id="run-1-threshold"')]
    assert "the diagonal is each label" in confusion and "<th>support</th>" in confusion    # per-class table
    wrong = page[page.index('id="run-1-wrong"'):]
    assert "the stock market fell today 0" in wrong and "texts read through" in wrong     # texts by id
    assert "topics-tfidf" not in page                           # the other spec's runs are not in its leaderboard
    assert not list(out.parent.glob(".*.tmp"))                  # written atomically


def test_report_defaults_to_the_best_two_runs_of_the_spec(runs):
    for copy in ("toy-low", "toy-unscored"):      # copies of the trained run: their predictions are older
        for stats in (runs["runs"] / copy).glob("predict-*.json"):
            os.utime(stats, (0, 0))
    out = kr.write_report([], runs["toy"], runs["root"] / "best.html", runs=runs["runs"])
    page = out.read_text()
    assert "run-2" in _ids(page) and "run-3" not in _ids(page)
    assert page.count('<tr class="chosen">') == 2
    assert "toy-low" in page and "toy-unscored" in page        # in the leaderboard, not reported on


def test_report_multiclass_loss_log_and_missing_spec(runs, tmp_path):
    (topics,) = [p for p in runs["runs"].iterdir() if p.name.startswith("topics-")]
    logged = shutil.copytree(runs["trained"], tmp_path / "runs" / "toy-logged")
    metrics = json.loads((logged / "train_metrics.json").read_text())
    (logged / "train_metrics.json").write_text(json.dumps({**metrics, "loss_log": [0.9, 0.7, 0.4]}))
    config = json.loads((logged / "run.json").read_text())
    config["spec"]["path"] = str(tmp_path / "gone.toml")      # the spec file is gone: ids only
    (logged / "run.json").write_text(json.dumps(config))
    page = kr.write_report([topics, logged], None, tmp_path / "r.html", split="test").read_text()
    ids = _ids(page)
    assert {"run-1-confusion", "run-1-calibration", "run-1-wrong"} <= ids
    assert "run-1-threshold" not in ids and "run-1-roc" not in ids          # binary only
    assert "confidence of the chosen label" in page
    loss = page[page.index('id="run-2-loss"'):page.index('id="run-2-shift"')]
    assert "data:image/png;base64," in loss and "the CV folds recorded no loss log" in loss
    assert "is gone: ids only" in page
    _assert_offline(page)


def test_report_names_a_missing_run(runs):
    result = CliRunner().invoke(main, ["report", "nope", "--runs-dir", str(runs["runs"])])
    assert result.exit_code == 2 and "nope" in result.output


EVIL = '<script>alert(1)</script> & "q"'
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;q&#34;"
EVIL_NAME = EVIL.replace("/", "")          # a folder name cannot hold "/"
ESCAPED_NAME = ESCAPED.replace("/", "")


def _rewrite_csv(path, change):
    """A CSV's rows (header first) rewritten by change, through the csv module: it quotes the `"` in EVIL."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(change(rows))


def _relabel(rows):
    """Label "1" renamed EVIL in a kit CSV: its p_1 column and the cells of its true/label columns."""
    header, *body = rows
    columns = {i for i, name in enumerate(header) if name in ("true", "pred", "label")}
    header = [f"p_{EVIL}" if name == "p_1" else name for name in header]
    return [header] + [[EVIL if i in columns and cell == "1" else cell for i, cell in enumerate(row)] for row in body]


def _evil_texts(rows):
    """EVIL appended to every text of a train CSV: whichever OOF rows are shown carry it."""
    header, *body = rows
    column = header.index("text")
    return [header] + [[cell + " " + EVIL if i == column else cell for i, cell in enumerate(row)] for row in body]


def test_report_escapes_markup_read_from_run_folders(runs, tmp_path):
    """The run name, spec name, a label, OOF row texts and a notice all come from files: the page
    shows them as text (autoescaped), never as markup."""
    competition = shutil.copytree(runs["root"] / "toy", tmp_path / "toy")
    _rewrite_csv(competition / "train.csv", _evil_texts)
    directory = shutil.copytree(runs["trained"], tmp_path / "runs" / EVIL_NAME)
    (tmp_path / "runs" / f"broken{EVIL_NAME}").mkdir()           # a notice naming it
    config = json.loads((directory / "run.json").read_text())
    config["spec"].update(name=EVIL, path=str(competition / "competition.toml"))
    config["spec"]["resolved"]["labels"] = ["0", EVIL]
    (directory / "run.json").write_text(json.dumps(config))
    for name in ("oof.csv", "predictions-test.csv"):
        _rewrite_csv(directory / name, _relabel)
    page = kr.write_report([directory], None, tmp_path / "r.html").read_text()
    assert "<script" not in page and EVIL not in page and EVIL_NAME not in page
    assert page.count("alert(1)") == page.count("&lt;script&gt;alert(1)")     # every one of them escaped
    assert f"<title>kit report: {ESCAPED}</title>" in page                   # the spec name
    assert f"<h2>1. {ESCAPED_NAME}</h2>" in page and f'<a href="#run-1">{ESCAPED_NAME}</a>' in page    # run name
    assert f"P({ESCAPED}): KS" in page                                       # the label
    wrong = page[page.index('id="run-1-wrong"'):]
    assert f"<td>{ESCAPED}</td>" in wrong and f"{ESCAPED}</span>" in wrong     # a label cell, a row's text
    assert f"broken{ESCAPED_NAME}: not a run folder" in page
    _assert_offline(page)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (not required in CI)")
def test_report_screenshot_in_headless_chromium(runs, tmp_path):
    from PIL import Image
    out = kr.write_report([runs["trained"]], None, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
                    out.resolve().as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (3000, 1200)
    assert (image < 128).mean() > 0.01               # text and plots drawn, not a blank page


def test_the_settings_show_the_levers_and_nothing_a_road_ignores():
    from kit.outputs.report import run_settings, settings_text
    train = {"lr": 1e-3, "epochs": 2.0, "pseudo": "t:test", "pseudo_threshold": 0.9, "pseudo_soft": True,
             "teacher": "t", "kl_weight": 0.5, "temperature": 2.0}
    llm = {"model": {"model": "smollm2", "head": "classify", "lora_r": 16, "lora_layers": 4}, "train": train}
    text = settings_text(run_settings(llm))
    assert text.startswith("lr 0.001 2.0 ep r16 top4") and "pseudo t:test p>=0.9 soft" in text
    assert "teacher t kl 0.5@T2" in text
    extractor = {"model": {"model": "minilm", "head": "extract"}, "train": {"lr": 1e-3, "epochs": 2.0}}
    assert settings_text(run_settings(extractor)) == "-"


def test_the_default_report_includes_the_run_behind_the_latest_submission(tmp_path):
    spec = load_spec(write_toy_competition(tmp_path))
    runs = tmp_path / "runs"
    cross_validate(spec, ModelArgs(model="tfidf"), TrainArgs(seed=0), folds=3, runs=runs, name="scored")
    directory, _ = train_run(spec, ModelArgs(model="tfidf"), TrainArgs(seed=4), name="submitted", runs=runs)
    predict_split(spec, "test", run=directory.name, out=tmp_path / "submit.csv", runs=runs)
    page = kr.write_report([], spec, tmp_path / "report.html", runs=runs, top=1).read_text()
    headings = re.findall(r"<h2>\d+\. ([^<]*)</h2>", page)
    assert any("scored" in h for h in headings) and any("submitted" in h for h in headings), headings


def test_a_predicted_split_with_answers_is_scored_in_the_report(runs):
    out = runs["root"] / "answers.html"
    (runs["toy"].path.parent / "test_labels.csv").write_text(
        "id,label\n" + "".join(f"{100 + i},{i % 2}\n" for i in range(8)))
    spec = runs["toy"].path
    spec.write_text(spec.read_text().replace("[columns]", '[answers]\ntest = "test_labels.csv"\n[columns]', 1))
    page = kr.write_report([runs["trained"]], out=out).read_text()
    assert "test (its labelled copy in the spec&#39;s [answers]): f1 " in page and "on 8 rows" in page
