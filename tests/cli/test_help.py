"""Every subcommand's --help agrees with itself: a switch states no default (its help says what
it does), every stated default is the value the command really uses, required options are
listed first, --device reads the same everywhere, and no command offers an option it refuses
or ignores.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from fbdl_fast.cli.demo import DEMO_FULL, DEMO_QUICK
from fbdl_fast.cli.main import build_parser
from fbdl_fast.cli.options import FLAGS
from fbdl_fast.cli.train import build_request
from fbdl_fast.training.presets import MODEL_TITLES
from fbdl_fast.training.request import check_distillable
from minilm_run import needs_minilm

# "(default: X" up to the end of X: a ";" (another model's default follows), ")" or ":" (a
# reason follows, as in --threads).
STATED = re.compile(r"\(default: ([^;):]+)")


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of each `fbdl-fast COMMAND`, by command."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def command_parser(command: str) -> argparse.ArgumentParser:
    return command_parsers()[command]


COMMANDS = sorted(command_parsers())


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The parser's options as --help lists them, -h and positionals left out."""
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            yield action


def rendered(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's entry in --help, as the command's formatter writes it, on one line."""
    formatter = parser.formatter_class(prog=parser.prog)
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def shown(value: object) -> str:
    """A default as --help writes it: a tuple of kernel sizes as 3,4,5."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def resolved_defaults(argv: list[str]) -> dict[str, object]:
    """What the train/distill command line `argv` really uses for each field: the request's and
    the model config's values once the options are turned into a request."""
    args = build_parser().parse_args(argv)
    request, config = build_request(args)
    return {**vars(config), **vars(request)}


@pytest.mark.parametrize("command", COMMANDS)
def test_no_switch_states_a_default(command: str) -> None:
    """A store_true/store_false flag says what it does, never "(default: True)": on
    --no-spell-emoji that read as the opposite of the truth."""
    parser = command_parser(command)
    for action in options(parser):
        text = rendered(parser, action)
        assert "(default: True)" not in text and "(default: False)" not in text, text
        if action.nargs == 0:
            assert "default" not in text, text


@pytest.mark.parametrize("command", COMMANDS)
def test_stated_defaults_are_the_parsers(command: str) -> None:
    """Where an option has a default value in the parser, --help states that value; where it
    has none (None: decided later), what --help states is a description, not a value that
    looks like one the parser holds."""
    parser = command_parser(command)
    for action in options(parser):
        text = rendered(parser, action)
        stated = STATED.findall(text)
        if action.default is None:
            assert all(value.strip() not in ("True", "False", "None") for value in stated), text
            continue
        if action.nargs == 0 or action.default == []:
            continue
        assert stated == [shown(action.default)], text


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["train", "--data", "p.csv"], "train"),
        *[
            (["distill", "--teacher", "t", "--data", "p.csv", "--student", student], "distill")
            for student in sorted(MODEL_TITLES)
        ],
    ],
)
def test_model_defaults_in_help_are_the_ones_used(argv: list[str], command: str) -> None:
    """train's and distill's model options have no parser default (the model decides): the
    default each states is the value a run with that option left out gets, for train's default
    model and for every student distill offers."""
    parser = command_parser(command)
    used = resolved_defaults(argv)
    checked = 0
    for action in options(parser):
        if action.default is not None or action.dest not in FLAGS:
            continue
        stated = STATED.findall(rendered(parser, action))
        if stated and used.get(action.dest) is not None:  # None: a described default
            assert stated[0].strip() == shown(used[action.dest]), (action.dest, stated)
            checked += 1
    assert checked >= 15  # the model group, not a table that lost its defaults


@needs_minilm
def test_minilm_defaults_in_train_help_are_the_ones_used() -> None:
    """train --help's "minilm: X" is what `train --model minilm` uses."""
    parser = command_parser("train")
    used = resolved_defaults(["train", "--data", "p.csv", "--model", "minilm"])
    checked = 0
    for action in options(parser):
        found = re.search(r"; minilm: ([^)]+)\)", rendered(parser, action))
        if found:
            assert found[1] == shown(used[action.dest]), action.dest
            checked += 1
    assert checked >= 4


def test_demo_sizes_in_help_are_the_presets() -> None:
    """demo's --epochs and --samples are None in the parser (the preset decides): their help
    states the full preset's value and the quick one's."""
    parser = command_parser("demo")
    for action in options(parser):
        if action.dest in ("epochs", "samples"):
            text = rendered(parser, action)
            assert f"(default: {DEMO_FULL[action.dest]}; --quick: {DEMO_QUICK[action.dest]})" in (
                text
            )


def test_distill_offers_only_what_it_accepts() -> None:
    """distill trains on one label a post with shuffled posts, and offers none of train's
    options for fine-tuning MiniLM (--freeze-layers, --layer-decay, --no-spell-emoji, "minilm:
    X" defaults); every switch and choice it offers is accepted by its check
    (check_distillable)."""
    parser = command_parser("distill")
    base = ["distill", "--teacher", "t", "--data", "p.csv", "--student", "cnn"]
    tried = 0
    for action in options(parser):
        text = rendered(parser, action)
        # train's MiniLM-only options start their help with "minilm:"; its model defaults
        # name minilm's as "; minilm: X"
        assert not (action.help or "").startswith("minilm:"), text
        assert "; minilm: " not in text, text
        flag = action.option_strings[0]
        if action.nargs == 0:
            values = [[flag]]
        elif action.choices is not None and action.dest not in ("model", "encoding_errors"):
            values = [[flag, str(choice)] for choice in action.choices]
        else:
            continue
        for extra in values:
            args = build_parser().parse_args([*base, *extra])
            request, config = build_request(args)
            check_distillable(request, request.validate(config))
            tried += 1
    assert tried >= 5


@pytest.mark.parametrize("command", COMMANDS)
def test_required_options_come_first(command: str) -> None:
    """In each group of --help, the required options (evaluate's --data, distill's --teacher)
    are listed before the optional ones."""
    parser = command_parser(command)
    for group in parser._action_groups:
        offered = list(options(parser))
        required = [a.required for a in group._group_actions if a in offered]
        assert required == sorted(required, reverse=True), (group.title, required)


def test_device_is_worded_one_way() -> None:
    """--device has one help text in every command that offers it."""
    texts = {}
    for command in COMMANDS:
        parser = command_parser(command)
        for action in options(parser):
            if "--device" in action.option_strings:
                texts[command] = action.help
    assert set(texts) >= {"train", "distill", "evaluate", "predict", "demo"}
    assert len(set(texts.values())) == 1, texts


def test_predict_offers_no_label_column_and_states_what_it_keeps() -> None:
    """predict reads no labels, so it offers no --label-column; its --keep-columns help states
    the default (an id column is kept)."""
    parser = command_parser("predict")
    flags = {flag: action for action in options(parser) for flag in action.option_strings}
    assert "--label-column" not in flags
    assert "(default: id, when the input has an id column" in rendered(
        parser, flags["--keep-columns"]
    )


def test_a_zero_default_is_stated() -> None:
    """The formatter leaves out None, False and [] defaults, but 0 (which == False) is a value:
    it is stated, as any other number."""
    from fbdl_fast.cli.common import HelpFormatter

    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--count", type=int, default=0, help="how many")
    parser.add_argument("--share", type=float, default=0.0, help="how much")
    parser.add_argument("--quiet", action="store_true", help="say less")
    texts = [rendered(parser, action) for action in options(parser)]
    assert texts == [
        "--count COUNT how many (default: 0)",
        "--share SHARE how much (default: 0.0)",
        "--quiet say less",
    ]
