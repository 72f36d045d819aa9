"""`report` and the metrics log it reads: runs given wrongly, output paths, damaged records.

The run folders here are written the way a training run writes them (config.yaml, metrics.jsonl through
MetricsLog); tests/test_experiments.py reports on runs really trained."""

from __future__ import annotations

import json

import pytest
import yaml

from blueberry_video import cli
from blueberry_video.errors import ConfigError, RecordWarning
from blueberry_video.report import RunRecordsError, compare_runs
from blueberry_video.training.records import MetricsLog


def make_run(folder, losses, **settings):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"learning_rate": 1e-3, **settings}))
    log = MetricsLog(folder)
    for step, loss in enumerate(losses, 1):
        log.append(step, {"loss": loss, "step_time": 0.5})
    log.close()
    return folder


def rows(table: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")]
            for line in table.splitlines()[2:]}


def test_a_last_line_cut_short_is_left_out_with_a_warning(tmp_path):
    run = make_run(tmp_path / "run", [0.9, 0.8, 0.7])
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 4, "loss": 0.6')  # a crash while the line was written
    with pytest.warns(RecordWarning, match=r"metrics.jsonl: its last line was cut short"):
        assert [record["step"] for record in MetricsLog(run).read()] == [1, 2, 3]
    with pytest.warns(RecordWarning):
        report = compare_runs([run])
    assert rows(report.table)["run"][2] == "3"


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    run = make_run(tmp_path / "run", [0.9, 0.8, 0.7])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"metrics.jsonl line 2 is not a JSON record .*mend or delete that line"):
        MetricsLog(run).read()


def test_truncate_after_drops_a_cut_last_line_and_the_steps_after_the_checkpoint(tmp_path):
    run = make_run(tmp_path / "run", [0.9, 0.8, 0.7, 0.6])
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 5, "lo')
    with pytest.warns(RecordWarning):
        MetricsLog(run).truncate_after(3)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_run_without_a_logged_step_is_reported_beside_the_others(tmp_path):
    done = make_run(tmp_path / "done", [0.9, 0.5])
    starting = tmp_path / "starting"
    starting.mkdir()
    (starting / "config.yaml").write_text(yaml.safe_dump({"learning_rate": 1e-2}))  # no metrics.jsonl yet
    report = compare_runs([done, starting])
    cells = rows(report.table)
    assert cells["starting"][1].startswith("no step logged")
    assert cells["starting"][2:4] == ["0.01", "0"] and cells["done"][2:4] == ["0.001", "2"]


def test_the_same_run_twice_and_a_file_for_a_run_are_refused(tmp_path):
    run = make_run(tmp_path / "run", [0.9])
    with pytest.raises(RunRecordsError, match=r"are the same run folder: give each run once"):
        compare_runs([run, tmp_path / "." / "run"])
    with pytest.raises(RunRecordsError, match=r"config.yaml: a file; give the folder of the training run"):
        compare_runs([run / "config.yaml"])


def test_prompts_holding_commas_are_told_apart(tmp_path):
    one = make_run(tmp_path / "one", [0.9], validation_prompt=["a cat, sleeping", "a dog"])
    two = make_run(tmp_path / "two", [0.9], validation_prompt=["a cat"])
    assert rows(compare_runs([one, two]).table)["one"][2] == "a cat, sleeping ::: a dog"


def test_report_makes_the_folders_it_writes_to(tmp_path, capsys):
    run = make_run(tmp_path / "run", [0.9, 0.8])
    out, plot = tmp_path / "new" / "results.md", tmp_path / "other" / "plots" / "report.png"
    cli.main(["report", str(run), "--out", str(out), "--plot", str(plot)])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![training loss of every run](../other/plots/report.png)" in out.read_text()


def test_report_output_paths_that_cannot_work_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", [0.9, 0.8])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"--out .*a_file/x.md: cannot make its folder"):
        cli.main(["report", str(run), "--out", str(tmp_path / "a_file" / "x.md"), "--plot", "report.png"])
    with pytest.raises(ConfigError, match=r"--out and --plot are the same file"):
        cli.main(["report", str(run), "--out", "same.png", "--plot", "same.png"])
    with pytest.raises(ConfigError, match=r"--plot .* is a folder"):
        cli.main(["report", str(run), "--out", "results.md", "--plot", str(tmp_path)])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file", "run"]
