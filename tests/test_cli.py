"""The `scnas` command: help for every stage, one-line errors, no partial output."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import types

import pytest
from conftest import cli_env

from scnas.cli import build_parser

STAGES = [
    "synth",
    "check",
    "splits",
    "preprocess",
    "random-genotype",
    "search",
    "train",
    "predict",
    "evaluate",
    "table",
    "convert",
    "plot",
    "status",
    "export",
    "profiles",
]


def scnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scnas", *args], env=cli_env(), capture_output=True, text=True)


def test_help_lists_every_stage():
    result = scnas("--help")
    assert result.returncode == 0
    for stage in STAGES:
        assert stage in result.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([stage, "--help"])
    assert exit_.value.code == 0
    assert "usage: scnas " + stage in capsys.readouterr().out


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("scnas",)):
    """(command line, parser) of every subcommand at every depth (scnas plot search, scnas profiles install)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield " ".join((*path, name)), sub
                yield from _commands(sub, (*path, name))


def _subparser_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _example_commands(epilog: str) -> list[list[str]]:
    """The `scnas ...` commands of an epilog's example, continuation lines joined, as argv lists."""
    text = epilog.split("example:", 1)[1].replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in text.splitlines() if line.strip().startswith("scnas ")]


def test_every_option_has_help_stating_its_default():
    unstated = []
    for command, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                unstated.append(f"{command} {name}: no help")
                continue
            text = parser._get_formatter()._expand_help(action)
            if not (action.default is None or action.default is False or action.default == argparse.SUPPRESS):
                if f"(default: {action.default})" not in text:
                    unstated.append(f"{command} {name}: default {action.default!r} not in {text!r}")
            elif action.option_strings and not action.required and action.nargs != 0 and "default: " not in text:
                unstated.append(f"{command} {name}: says nothing of what happens without it: {text!r}")
    assert not unstated, "\n".join(unstated)


def test_a_default_is_appended_once_and_only_where_there_is_one():
    synth = dict(_commands(build_parser()))["scnas synth"]
    text = " ".join(synth.format_help().split())
    assert "number of cases (default: 10)" in text
    assert "random seed: the same seed and sizes give the same task (default: 0)" in text
    assert text.count("(default: 10)") == 1
    assert "(default: None)" not in text and "(default: False)" not in text


def test_every_command_has_a_one_line_description_and_an_example_that_parses():
    seen = 0
    for command, parser in _commands(build_parser()):
        assert parser.description and "\n" not in parser.description, command
        assert parser.epilog and parser.epilog.startswith("example:\n"), command
        examples = _example_commands(parser.epilog)
        assert examples, f"{command}: no `scnas ...` line in its example"
        for argv in examples:
            args = build_parser().parse_args(argv)
            assert callable(args.func), argv
        words = command.split()[1:]
        assert any(argv[: len(words)] == words for argv in examples), f"{command}: its example runs another command"
        seen += 1
    assert seen >= len(STAGES) + 5  # the plot and profiles actions as well


def test_one_name_per_command():
    for parser in [build_parser(), *(p for _, p in _commands(build_parser()))]:
        for action in _subparser_actions(parser):
            parsers = list(action.choices.values())
            assert len({id(p) for p in parsers}) == len(parsers), sorted(action.choices)
    assert "retrain" not in _subparser_actions(build_parser())[0].choices


def test_convert_parses_source_target_and_format(capsys):
    args = build_parser().parse_args(["convert", "Task02_Heart", "Dataset002_Heart", "--to", "nnunetv2"])
    assert (args.source, args.target, args.to, args.func.__name__) == (
        "Task02_Heart",
        "Dataset002_Heart",
        "nnunetv2",
        "cmd_convert",
    )
    assert build_parser().parse_args(["convert", "a", "b", "--to", "msd"]).to == "msd"
    for argv in (["convert", "a", "b", "--to", "nifti"], ["convert", "a", "b"], ["convert", "a", "--to", "msd"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nifti'" in err and "--to" in err
    help_text = scnas("convert", "--help").stdout
    assert "nnunetv2" in help_text and "msd" in help_text and "SOURCE" in help_text.upper()


def test_convert_prints_the_folder_it_wrote(in_process, tmp_path, capsys):
    calls = []

    def convert_dataset(source, target, to):
        calls.append((source, target, to))
        return target

    in_process.setitem(sys.modules, "scnas.data.convert", types.SimpleNamespace(convert_dataset=convert_dataset))
    from scnas.cli import main

    source, target = tmp_path / "Task02_Heart", tmp_path / "Dataset002_Heart"
    assert main(["convert", str(source), str(target), "--to", "nnunetv2"]) == 0
    assert calls == [(source, target, "nnunetv2")]
    assert capsys.readouterr().out.splitlines() == [str(target)]


def _one_line_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"scnas {command}: error: "), last
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_missing_dataset_folder_is_named(tmp_path):
    missing = tmp_path / "nope"
    _one_line_error(scnas("check", "--dataset", str(missing)), "check", str(missing), "not found")
    out = tmp_path / "pre"
    _one_line_error(scnas("preprocess", "--dataset", str(missing), "--out", str(out)), "preprocess", str(missing))
    assert not out.exists()


def test_check_lists_every_problem_then_fails(tmp_path, tiny_task):
    import shutil

    root = tmp_path / "task"
    shutil.copytree(tiny_task["raw"], root)
    images = sorted((root / "imagesTr").iterdir())
    images[0].write_bytes(b"not a nifti")
    images[1].unlink()
    report = tmp_path / "check.json"
    result = scnas("check", "--dataset", str(root), "--report", str(report))
    _one_line_error(result, "check", "2 problems")
    assert images[0].name in result.stderr and images[1].name in result.stderr
    assert not report.exists()
    ok = scnas("check", "--dataset", str(tiny_task["raw"]), "--report", str(report))
    assert ok.returncode == 0 and json.loads(report.read_text())["cases"]


def test_preprocess_refuses_an_invalid_dataset_before_writing(tmp_path, tiny_task):
    import shutil

    root = tmp_path / "task"
    shutil.copytree(tiny_task["raw"], root)
    sorted((root / "labelsTr").iterdir())[-1].unlink()
    out = tmp_path / "pre"
    _one_line_error(scnas("preprocess", "--dataset", str(root), "--out", str(out)), "preprocess", "labelsTr")
    assert not out.exists()


def test_bad_config_key_is_named(tmp_path, tiny_task):
    result = scnas(
        "preprocess",
        "--dataset",
        str(tiny_task["raw"]),
        "--out",
        str(tmp_path / "p"),
        "--config",
        json.dumps({"preprocess": {"spacng": [1, 1, 1]}}),
    )
    _one_line_error(result, "preprocess", "config key preprocess", "'spacng'")


def test_bad_genotype_is_refused_before_training(tmp_path, tiny_task):
    genotype = tmp_path / "genotype.json"
    genotype.write_text(json.dumps({"format": "scnas-genotype", "version": 99}))
    result = scnas(
        "train",
        "--model",
        "scnas",
        "--genotype",
        str(genotype),
        "--preprocessed",
        str(tiny_task["pre"]),
        "--splits",
        str(tiny_task["splits"]),
        "--fold",
        "0",
        "--out",
        str(tmp_path / "fold_0"),
    )
    _one_line_error(result, "train", str(genotype), "version")
    assert not (tmp_path / "fold_0").exists()


def test_splits_command_writes_nnunet_format(tmp_path, tiny_task):
    out = tmp_path / "splits_final.json"
    assert scnas("splits", "--dataset", str(tiny_task["raw"]), "--out", str(out), "--seed", "1").returncode == 0
    splits = json.loads(out.read_text())
    assert len(splits) == 5 and all(set(f) == {"train", "val"} for f in splits)


@pytest.fixture
def in_process(monkeypatch):
    """Run `scnas.cli.main` in this process: no SCNAS_DEBUG, and the root logger restored afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.delenv("SCNAS_DEBUG", raising=False)
    yield monkeypatch
    root.handlers[:] = handlers
    root.setLevel(level)


def test_an_unexpected_error_is_one_line_and_verbose_shows_the_traceback(in_process, capsys):
    import scnas.cli as cli

    def broken(args):
        raise ZeroDivisionError("division by zero\nsecond line")

    in_process.setattr(cli, "cmd_synth", broken)
    argv = ["synth", "--kind", "heart", "--out", "unused"]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        "scnas synth: error: unexpected ZeroDivisionError: division by zero (run with -v for the traceback)"
    ]
    assert cli.main([*argv, "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err
    assert err.strip().splitlines()[-1].startswith("scnas synth: error: unexpected ZeroDivisionError")
    in_process.setenv("SCNAS_DEBUG", "1")
    assert cli.main(argv) == 1
    assert "Traceback" in capsys.readouterr().err


def test_os_errors_are_one_line_in_words(in_process, capsys):
    import errno

    import scnas.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/results/Task/fold_0/checkpoint_final.pt")

    in_process.setattr(cli, "cmd_synth", full)
    assert cli.main(["synth", "--kind", "heart", "--out", "unused"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "scnas synth: error: /results/Task/fold_0/checkpoint_final.pt: no space left on device (disk full)"
    ]


def test_table_print_without_out_writes_next_to_the_results(in_process, tmp_path, tiny_task, capsys):
    import shutil

    from scnas.cli import main
    from scnas.evaluation.metrics import evaluate_cases

    label = tiny_task["raw"] / "labelsTr" / "heart_000.nii.gz"
    folds = [tmp_path / "results" / "Tiny" / "uresnet" / f"fold_{k}" for k in (0, 1)]
    for out in folds:
        evaluate_cases([("heart_000", label, label)], {0: "background", 1: "left atrium"}, out)
    metrics = [str(out / "metrics.csv") for out in folds]
    capsys.readouterr()
    assert main(["table", "--metrics", *metrics, "--print"]) == 0
    printed = capsys.readouterr().out
    written = tmp_path / "results" / "cv_table.md"
    assert written.read_text() in printed and "| 3D U-ResNet | 100.00 ± 0.00 |" in printed

    other = tmp_path / "other" / "T" / "scnas" / "fold_0"
    shutil.copytree(folds[0], other)
    assert main(["table", "--metrics", metrics[0], str(other / "metrics.csv"), "--print"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "2 results folders" in err and "--out" in err
