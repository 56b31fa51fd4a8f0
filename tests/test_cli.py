"""The command line as a whole: every flag documented, the new commands listed, the old ones intact, and
mistakes reported as one line with exit status 2."""

import argparse
import re

import pytest

from cifar_resnet.cli import get_args_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_COMMANDS = ("evaluate", "plot", "predict", "interpret", "lr-find")


def subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subparsers(sub, (*prefix, name))


def test_every_flag_and_argument_is_documented():
    commands = dict(subparsers(get_args_parser()))
    assert {(c,) for c in (*NEW_COMMANDS, "train", "models", "data")} <= set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help.strip(), f"{' '.join(name)}: {action.option_strings or action.dest}"


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    # the command list: one command per line, indented by 4 ("    plot       loss, accuracy and ...")
    listed = re.findall(r"^    (\S+) ", out, flags=re.MULTILINE)
    assert set(listed) >= {*NEW_COMMANDS, "train", "models", "data"}, out


def test_existing_commands_still_work(capsys, cli):
    code, out, _ = cli("models")
    assert code == 0 and "seed_resnet" in out.split() and "fast_small" in out.split()
    for command in ("train", "data"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    capsys.readouterr()


@pytest.mark.parametrize("command", ["evaluate", "interpret", "predict"])
def test_bad_checkpoints_are_one_line(tmp_path, cli, assert_one_line_error, command):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    extra = ["--index", "0"] if command == "predict" else []
    for path, message in (
        (tmp_path / "missing.pt", "no such checkpoint"),
        (tmp_path, "is a directory"),
        (tmp_path / "junk.pt", "not a readable checkpoint"),
    ):
        code, _, err = cli(command, path, *extra)
        assert_one_line_error(code, err, message)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "x.pt", "--split", "holdout"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
