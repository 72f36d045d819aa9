"""Experiment folders from the template, runs of their config through `blueberry-video train`, and `report`."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

from blueberry_video import cli
from blueberry_video.config import FIELDS, load_yaml
from blueberry_video.demo import demo_config_path
from blueberry_video.errors import ConfigError
from blueberry_video.experiments import TEMPLATE_DIR, command_path, new_experiment
from blueberry_video.report import RunRecordsError, compare_runs
from tests.conftest import REPO_ROOT

COMMENTED_SETTING = re.compile(r"^# ([a-z][a-z0-9_]*): ", re.MULTILINE)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return new_experiment("lr-sweep", base_dir=tmp_path_factory.mktemp("experiments"))


def commands(text: str) -> list[list[str]]:
    """The commands a README or config header gives, split as the shell splits them."""
    lines = [line.lstrip("# ") for line in text.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith(("blueberry-video ", "accelerate "))]


def flag_values(command: list[str], flag: str) -> list[str]:
    return [value for name, value in zip(command, command[1:]) if name == flag]


def test_new_experiment_copies_the_template_with_the_name_filled_in(experiment):
    assert sorted(p.name for p in experiment.iterdir()) == sorted(p.name for p in TEMPLATE_DIR.iterdir())
    readme = (experiment / "README.md").read_text()
    assert "{{" not in readme and f"--config {experiment}/config.yaml" in readme
    for section in ("Research question", "Hypothesis", "Method", "How to run", "Results", "Conclusion"):
        assert f"## {section}" in readme
    assert "![loss curves of all runs](report.png)" in readme
    assert load_yaml(experiment / "config.yaml")["output_dir"] == "outputs/lr-sweep/baseline"


def test_new_experiment_commands_name_the_folder_it_was_made_in(tmp_path):
    path = new_experiment("d1", base_dir=tmp_path / "my exps")
    given = commands((path / "README.md").read_text()) + commands((path / "config.yaml").read_text())
    assert len(given) >= 5
    for command in given:
        for flag in ("--config", "--out", "--plot"):
            for value in flag_values(command, flag):
                assert value.startswith(str(path.resolve()) + "/"), command
        assert all(REPO_ROOT.joinpath(value).is_file() for value in flag_values(command, "--config")), command
    # Where the folder is inside the repository, its commands (run from there) name it relative to it.
    assert command_path(REPO_ROOT / "experiments" / "d1") == "experiments/d1"


def test_new_experiment_runs_write_where_the_config_and_its_commands_say(experiment):
    """The config's own output_dir is the baseline run's, so the command in its header, with or without
    --output_dir, is that run, and every other run of the README writes elsewhere."""
    config = (experiment / "config.yaml").read_text()
    trains = [c for c in commands(config) + commands((experiment / "README.md").read_text()) if "--config" in c]
    output_dirs = [flag_values(c, "--output_dir") for c in trains]
    assert all(len(dirs) == 1 for dirs in output_dirs)
    baseline = load_yaml(experiment / "config.yaml")["output_dir"]
    assert [dirs[0] for dirs, c in zip(output_dirs, trains) if "--learning_rate" not in c] == [baseline] * 4
    assert {dirs[0] for dirs, c in zip(output_dirs, trains) if "--learning_rate" in c} == {"outputs/lr-sweep/lr-5e-4"}
    report = next(c for c in commands((experiment / "README.md").read_text()) if c[1] == "report")
    assert report[2:4] == [baseline, "outputs/lr-sweep/lr-5e-4"]


def test_template_config_runs_the_demo_and_lists_valid_settings(tmp_path):
    text = (TEMPLATE_DIR / "config.yaml").read_text()
    settings = load_yaml(TEMPLATE_DIR / "config.yaml")
    assert load_yaml(demo_config_path("cogvideox")).items() <= settings.items()
    assert settings["pretrained_model_name_or_path"] == ".blueberry/demo/tiny-cogvideox"
    assert settings["instance_data_root"] == ".blueberry/demo/sample-videos"
    commented = COMMENTED_SETTING.findall(text)
    assert len(commented) >= 30 and not set(commented) & set(settings)
    # Every commented line, uncommented, is a setting the config accepts with that value.
    (tmp_path / "all.yaml").write_text(COMMENTED_SETTING.sub(r"\1: ", text))
    assert set(load_yaml(tmp_path / "all.yaml")) == set(settings) | set(commented)
    assert set(commented) | set(settings) <= set(FIELDS)


def test_new_experiment_refuses_an_existing_folder(experiment):
    with pytest.raises(ConfigError, match="already exists: pick another experiment name"):
        new_experiment("lr-sweep", base_dir=experiment.parent)


@pytest.mark.parametrize("name", ["", "has space", "../escape", "a/b", "-flag", "exp_template", "x" * 65])
def test_new_experiment_refuses_an_invalid_name(name, tmp_path):
    with pytest.raises(ConfigError, match="e.g. lr-sweep"):
        new_experiment(name, base_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_new_experiment_from_a_config_copies_it(tmp_path):
    source = tmp_path / "base.yaml"
    source.write_text("rank: 64\nlearning_rate: 3.0e-4\n")
    path = new_experiment("rank-64", base_dir=tmp_path / "experiments", from_config=source, family="cogvideox")
    assert (path / "config.yaml").read_text() == source.read_text() + "output_dir: outputs/rank-64/baseline\n"
    assert "rank-64" in (path / "README.md").read_text()


def test_new_experiment_from_an_invalid_config_writes_nothing(tmp_path):
    source = tmp_path / "typo.yaml"
    source.write_text("learning_rat: 0.001\n")
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        new_experiment("typo", base_dir=tmp_path / "experiments", from_config=source)
    assert not (tmp_path / "experiments").exists()


def test_new_experiment_from_a_missing_config_names_the_from_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^--from .*nonexistent.yaml: file not found"):
        new_experiment("x1", base_dir=tmp_path, from_config=tmp_path / "nonexistent.yaml")
    assert not any(tmp_path.iterdir())


def test_new_experiment_refuses_a_family_its_config_contradicts(tmp_path, tiny_cogvideox_dir):
    source = REPO_ROOT / "recipes" / "configs" / "hunyuan-video_lora.yaml"
    with pytest.raises(ConfigError, match=r"trains hunyuan_video \(its file name says so\), not --family cogvideox: "
                                          r"leave out --family"):
        new_experiment("x2", base_dir=tmp_path, from_config=source, family="cogvideox")
    pointed = tmp_path / "mine.yaml"
    pointed.write_text(f"pretrained_model_name_or_path: {tiny_cogvideox_dir}\n")
    with pytest.raises(ConfigError, match=r"trains cogvideox \(its model folder .* says so\), not --family hunyuan_vi"):
        new_experiment("x3", base_dir=tmp_path, from_config=pointed, family="hunyuan_video")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]
    assert "--family cogvideox" in (new_experiment("x4", base_dir=tmp_path, from_config=pointed,
                                                   family="cogvideox") / "README.md").read_text()


def test_new_experiment_of_another_family_lists_every_setting_at_its_default(tmp_path, tiny_hunyuan_video_dir,
                                                                             sample_dataset_dir):
    path = new_experiment("hy2", base_dir=tmp_path, family="hunyuan_video")
    text = (path / "config.yaml").read_text()
    settings = load_yaml(path / "config.yaml")
    assert load_yaml(demo_config_path("hunyuan_video")).items() <= settings.items()
    assert settings["pretrained_model_name_or_path"] == ".blueberry/demo/tiny-hunyuan_video"
    assert settings["output_dir"] == "outputs/hy2/baseline"
    commented = COMMENTED_SETTING.findall(text)
    assert sorted(commented + list(settings)) == sorted(FIELDS)
    (tmp_path / "all.yaml").write_text(COMMENTED_SETTING.sub(r"\1: ", text))
    everything = load_yaml(tmp_path / "all.yaml")
    assert {name: everything[name] for name in commented} == {name: FIELDS[name].default for name in commented}
    # It trains the demo, on the tiny model and videos in the demo's stead.
    cli.main(["train", "--family", "hunyuan_video", "--config", str(path / "config.yaml"),
              "--pretrained_model_name_or_path", str(tiny_hunyuan_video_dir), "--instance_data_root",
              str(sample_dataset_dir), "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run"),
              "--max_train_steps", "2", "--lr_warmup_steps", "0", "--validation_prompt", ""])
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["guidance_scale"] == 6.0
    assert "blueberry-video demo --family hunyuan_video" in text and "{{" not in text


def test_cli_new_experiment(tmp_path, capsys):
    cli.main(["new-experiment", "cli-made", "--dir", str(tmp_path)])
    assert (tmp_path / "cli-made" / "config.yaml").is_file()
    assert "experiment created" in capsys.readouterr().out


@pytest.fixture(scope="module")
def runs(experiment, tiny_cogvideox_dir, sample_dataset_dir, tmp_path_factory):
    """The experiment's config trained twice through the CLI, at its learning rate and at a 4x lower one."""
    root = tmp_path_factory.mktemp("runs")
    short = ["--pretrained_model_name_or_path", str(tiny_cogvideox_dir), "--instance_data_root", str(sample_dataset_dir),
             "--cache_dir", str(root / "cache"), "--max_train_steps", "6", "--validation_prompt", ""]
    dirs = [root / "baseline", root / "lr-5e-4"]
    for output_dir, extra in zip(dirs, [[], ["--learning_rate", "5e-4"]]):
        cli.main(["train", "--family", "cogvideox", "--config", str(experiment / "config.yaml"),
                  "--output_dir", str(output_dir), *short, *extra])
    return dirs


def test_train_verb_runs_the_config_with_flags_on_top(runs, experiment):
    baseline, lower = runs
    for run, learning_rate in ((baseline, 0.002), (lower, 0.0005)):
        settings = yaml.safe_load((run / "config.yaml").read_text())
        assert settings["learning_rate"] == learning_rate
        assert settings["rank"] == load_yaml(experiment / "config.yaml")["rank"]  # from the YAML
        assert settings["validation_prompt"] == []
        assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == list(range(1, 7))
        assert (run / "pytorch_lora_weights.safetensors").is_file()
        assert not (run / "validation").exists()


def test_report_shows_only_the_settings_that_differ_and_the_losses(runs, tmp_path, capsys):
    baseline, lower = runs
    out, plot = tmp_path / "results.md", tmp_path / "plots" / "report.png"
    plot.parent.mkdir()
    cli.main(["report", str(baseline), str(lower), "--out", str(out), "--plot", str(plot)])
    printed = capsys.readouterr().out
    header, rule, *rows = [line for line in printed.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["run", "status", "learning_rate", "steps", "final loss", "min loss", "mean of last 10",
                       "training time"]
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")] for row in rows}
    assert set(cells) == {"baseline", "lr-5e-4"}
    assert cells["baseline"][1:3] == ["finished", "0.002"] and cells["lr-5e-4"][1:3] == ["finished", "0.0005"]
    for run in runs:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records]
        assert cells[run.name][3:7] == ["6", f"{losses[-1]:.4f}", f"{min(losses):.4f}", f"{sum(losses) / 6:.4f}"]
        assert cells[run.name][7] == f"{sum(r['step_time'] for r in records):.1f} s"
    markdown = out.read_text()
    assert header in markdown and "![training loss of every run](plots/report.png)" in markdown
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_labels_runs_by_path_where_folder_names_repeat(runs, tmp_path):
    copy = tmp_path / "baseline"
    copy.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "run_info.json"):
        (copy / name).write_bytes((runs[0] / name).read_bytes())
    report = compare_runs([runs[0], copy])
    assert [run.label for run in report.runs] == [str(runs[0]), str(copy)]
    assert report.differing == []


@pytest.fixture(scope="module")
def stopped_and_continued(experiment, runs, tiny_cogvideox_dir, sample_dataset_dir):
    """The baseline's settings stopped at step 3 as a preempted job stops, then continued in another output_dir."""
    from blueberry_video.config import parse_config
    from blueberry_video.models.cogvideox import CogVideoXFamily
    from blueberry_video.training.trainer import train

    root = runs[0].parent
    stopped, continued = root / "stopped", root / "continued"
    args = ["--config", str(experiment / "config.yaml"), "--pretrained_model_name_or_path", str(tiny_cogvideox_dir),
            "--instance_data_root", str(sample_dataset_dir), "--cache_dir", str(root / "cache"),
            "--max_train_steps", "6", "--validation_prompt", ""]
    assert train(parse_config([*args, "--output_dir", str(stopped)]), CogVideoXFamily(tiny_cogvideox_dir),
                 stop_after_step=3).stopped_early
    cli.main(["train", "--family", "cogvideox", *args, "--output_dir", str(continued),
              "--resume_from_checkpoint", str(stopped / "checkpoint-3")])
    return stopped, continued


def table_cells(table: str) -> tuple[list[str], dict[str, list[str]]]:
    header, rule, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    return header, {row[0]: row for row in rows}


def test_report_marks_a_stopped_run_and_the_run_that_continued_it(runs, stopped_and_continued, tmp_path):
    stopped, continued = stopped_and_continued
    report = compare_runs([runs[0], stopped, continued])
    header, cells = table_cells(report.table)
    # Where each run wrote and what it resumed are not settings that differ.
    assert header == ["run", "status", "steps", "final loss", "min loss", "mean of last 10", "training time"]
    assert cells["baseline"][1] == "finished"
    assert cells["stopped"][1:3] == ["stopped at step 3, resumed in continued", "3"]
    assert cells["continued"][1:3] == ["finished, resumed from stopped/checkpoint-3", "6"]
    report.write_markdown(tmp_path / "results.md")
    assert "A run stopped at step N (or still running) has no final weights" in (tmp_path / "results.md").read_text()
    _, alone = table_cells(compare_runs([runs[0], stopped]).table)
    assert alone["stopped"][1] == "stopped at step 3"


def test_report_leaves_out_bookkeeping_settings_and_marks_a_run_resumed_past_its_end(runs, tmp_path):
    copy = tmp_path / "more-steps"
    copy.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "run_info.json", "final_metrics.json"):
        (copy / name).write_bytes((runs[0] / name).read_bytes())
    settings = yaml.safe_load((copy / "config.yaml").read_text())
    settings.update(overwrite_output_dir=True, resume_from_checkpoint="latest", checkpoints_total_limit=2,
                    cache_dir=str(tmp_path / "cache"), report_to="wandb", tracker_project_name="sweep")
    (copy / "config.yaml").write_text(yaml.safe_dump(settings))
    with (copy / "metrics.jsonl").open("a") as metrics:  # resumed to more steps and killed before a checkpoint
        metrics.write(json.dumps({"step": 7, "loss": 0.5}) + "\n")
    report = compare_runs([runs[0], copy])
    assert report.differing == []
    assert report.statuses == ["finished", "stopped, no checkpoint"]


def test_report_names_a_folder_that_is_not_a_run(runs, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunRecordsError, match=f"{re.escape(str(tmp_path))}: no config.yaml"):
        compare_runs([runs[0], tmp_path])
    with pytest.raises(RunRecordsError, match=f"{re.escape(str(tmp_path / 'typo'))}: no such folder"):
        compare_runs([runs[0], tmp_path / "typo"])


def test_train_verb_refuses_an_unknown_flag(experiment):
    with pytest.raises(ConfigError, match=r"did you mean --learning_rate\?"):
        cli.main(["train", "--config", str(experiment / "config.yaml"), "--learning_rat", "1e-3"])



def test_new_experiment_from_a_recipe_config_runs_its_family_and_writes_its_own_outputs(tmp_path):
    source = REPO_ROOT / "recipes" / "configs" / "hunyuan-video_lora.yaml"
    path = new_experiment("hy-rank", base_dir=tmp_path, from_config=source)
    readme = (path / "README.md").read_text()
    assert f"--family hunyuan_video --config {path}/config.yaml" in readme
    assert "accelerate launch recipes/train_hunyuan_video.py" in readme
    assert "--family cogvideox" not in readme and "train_cogvideox" not in readme
    assert (REPO_ROOT / "recipes" / "train_hunyuan_video.py").is_file()
    copied = load_yaml(path / "config.yaml")
    assert copied["output_dir"] == "outputs/hy-rank/baseline"  # not the recipe's, which a second experiment would share
    assert {k: v for k, v in copied.items() if k != "output_dir"} == {
        k: v for k, v in load_yaml(source).items() if k != "output_dir"}
    assert "# compile: true" in (path / "config.yaml").read_text()  # the config's comments are kept

    unnamed = tmp_path / "mine.yaml"
    unnamed.write_text("rank: 8\n")
    with pytest.raises(ConfigError, match="cannot tell which model family .* pass --family"):
        new_experiment("x", base_dir=tmp_path, from_config=unnamed)
    assert "--family hunyuan_video" in (new_experiment("y", base_dir=tmp_path, from_config=unnamed,
                                                       family="hunyuan_video") / "README.md").read_text()
    assert load_yaml(tmp_path / "y" / "config.yaml")["output_dir"] == "outputs/y/baseline"
    # Without a config: the family's demo config, on the tiny model and videos its demo builds.
    demo = load_yaml(new_experiment("z", base_dir=tmp_path, family="hunyuan_video") / "config.yaml")
    assert load_yaml(demo_config_path("hunyuan_video")).items() <= demo.items()
    assert demo["pretrained_model_name_or_path"] == ".blueberry/demo/tiny-hunyuan_video"
    assert demo["instance_data_root"] == ".blueberry/demo/sample-videos" and demo["output_dir"] == "outputs/z/baseline"
