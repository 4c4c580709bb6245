"""Every bad number is refused by its flag before anything is allocated: inf like nan for every
float option, the seed's range, a model too large for the machine's memory (with the estimate),
a truncated pretrained weights file, and no .partial folder left by a refusal."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from fbdl_fast.cli import main
from fbdl_fast.cli.main import build_parser
from minilm_run import minilm_argv, needs_minilm
from tiny_run import cli_refusal, tiny_model_args, train_refusal, write_posts_csv

TINY = [*tiny_model_args(max_length=24), "--batch-size", "8", "--threads", "1", "--quiet"]


def _float_flags(command: str) -> list[str]:
    """The options of `fbdl-fast COMMAND` that take a real number (by what their type returns)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = []
    for action in sub.choices[command]._actions:
        if not action.option_strings or action.type is None or action.nargs == 0:
            continue
        try:
            value = action.type("1.5")
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        if isinstance(value, float):
            flags.append(action.option_strings[0])
    return flags


def test_the_float_options_are_found() -> None:
    """The enumeration the next tests rely on finds train's real-valued options."""
    found = set(_float_flags("train"))
    assert {"--lr", "--weight-decay", "--gradient-clip", "--dropout", "--val-fraction"} <= found
    assert {"--progress-every", "--focal-gamma", "--label-smoothing", "--ema"} <= found


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("flag", _float_flags("train"))
def test_train_refuses_a_non_finite_value_of_every_float_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """train --FLAG inf (or nan): exit 2 before the data is read, one line naming the flag."""
    err = train_refusal(tmp_path, capsys, [f"{flag}={value}"])
    assert flag in err.splitlines()[-1], err  # argparse's refusals come after the usage


@pytest.mark.parametrize("value", ["inf", "nan"])
@pytest.mark.parametrize("flag", _float_flags("distill"))
def test_distill_refuses_a_non_finite_value_of_every_float_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """distill --FLAG inf (or nan): exit 2, one line naming the flag, nothing created."""
    argv = ["distill", "--teacher", str(tmp_path / "teacher"), "--student", "cnn"]
    argv += ["--data", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "r")]
    assert main([*argv, f"{flag}={value}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert flag in err.splitlines()[-1] and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64)])
def test_a_seed_out_of_range_is_refused_by_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str
) -> None:
    """--seed below 0 or above 2**63 - 1 (numpy's generators take no negative seed; torch's
    take 64 bits, and the run adds the epoch and the rank to the seed): refused naming --seed
    and the range, before the data is read."""
    err = train_refusal(tmp_path, capsys, ["--seed", seed])
    assert f"--seed {seed} is invalid" in err and "2**63 - 1" in err, err


@pytest.mark.parametrize("seed", ["0", str(2**63 - 1)])
def test_the_seed_range_s_ends_train(tmp_path: Path, seed: str) -> None:
    """The two ends of the accepted range train (split, weights, order and dropout seeded)."""
    data = write_posts_csv(tmp_path / "posts.csv", 80, seed=1)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(out), "--epochs", "1", "--seed", seed]
    assert main([*argv, *TINY]) == 0
    assert (out / "best.pt").is_file()


@pytest.mark.parametrize(
    "options",
    [
        ["--max-length", "1000000"],  # within the size limits (config.SIZE_LIMITS), too big
        ["--hidden-dim", "65536", "--num-layers", "256"],
        ["--model", "cnn", "--hidden-dim", "65536", "--batch-size", "4096"],
        ["--model", "lstm", "--hidden-dim", "65536"],
    ],
)
def test_a_model_too_large_for_the_memory_is_refused_with_the_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    """Sizes no machine here can hold: exit 2 before the data is read (no allocation traceback,
    no folder), one line with the estimate, the memory available and the flags to shrink."""
    err = train_refusal(tmp_path, capsys, options)
    assert err.count("\n") == 1, err
    assert " needs about " in err and "of memory available on this machine" in err, err
    assert " parameters x 4 bytes x 3 " in err and "--hidden-dim" in err, err


def test_the_memory_estimate_counts_the_model_s_parameters() -> None:
    """The estimate's parameter count is the built model's, and its bytes follow the documented
    formula: parameters x 4 x 3, plus the activations of one batch (with attention scores)."""
    from fbdl_fast.models import create_model
    from fbdl_fast.training import memory
    from tiny_run import tiny_config

    config = tiny_config(vocab_size=200, max_seq_length=24, batch_size=8)
    for name in ("cnn", "lstm", "transformer"):
        needed = memory.estimate(name, config)
        built = sum(p.numel() for p in create_model(name, config).parameters())
        assert needed.parameters == built, name
        assert needed.weights_and_state == built * 4 * 3
        per_layer = 8 * 24 * 16 * memory.ACTIVATIONS_PER_LAYER
        scores = 8 * 2 * 24 * 24 if name == "transformer" else 0
        assert needed.activations == 4 * (per_layer + scores)


def test_a_model_is_compared_with_the_memory_available(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same request fits when the device has the memory and is refused, naming both
    figures, when it has less than the estimate."""
    from fbdl_fast.training import memory
    from fbdl_fast.training.request import TrainError, train_request

    request, config = train_request("cnn", data="posts.csv", hidden_dim=64, device="cpu")
    needed = memory.estimate("cnn", config).total
    monkeypatch.setattr(memory, "host_available_bytes", lambda: needed)
    request.validate(config)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: needed - 1)
    with pytest.raises(TrainError, match=rf"needs about {memory.size(needed)}, more than the"):
        request.validate(config)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("keep", [0.5, 10, 0])
def test_a_truncated_weights_file_is_one_error_naming_it(
    tmp_path: Path, name: str, keep: float
) -> None:
    """bert.read_weights on a weights file cut short (half, 10 bytes, empty): a ValueError
    naming the file and saying it is damaged, not the reader's own error."""
    import torch
    from safetensors.torch import save_file

    from fbdl_fast.models.bert import read_weights

    path = tmp_path / name
    tensors = {"encoder.weight": torch.ones(64, 64)}
    save_file(tensors, path) if name.endswith(".safetensors") else torch.save(tensors, path)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * keep) if keep < 1 else int(keep)])
    with pytest.raises(ValueError, match="damaged or truncated") as caught:
        read_weights(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@needs_minilm
def test_minilm_with_truncated_weights_is_one_line_and_leaves_no_partial_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """train --model minilm whose model.safetensors is truncated: exit 2, one line naming the
    file, no traceback, and no .partial folder beside the run."""
    import shutil

    from fbdl_fast.models import bert

    installed = bert.resolve_pretrained("all-minilm-l6-v2")
    folder = tmp_path / "minilm"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(installed / name, folder / name)
    with open(installed / "model.safetensors", "rb") as f:
        (folder / "model.safetensors").write_bytes(f.read(1 << 20))
    monkeypatch.setattr(bert, "resolve_pretrained", lambda _name: folder)
    # 64 posts: enough that train has no small-data warning before the refusal's one line
    data = write_posts_csv(tmp_path / "posts.csv", 64, seed=2)
    runs = tmp_path / "runs"
    err = cli_refusal(capsys, minilm_argv(data, runs / "run", 1))
    assert f"{folder / 'model.safetensors'} are damaged or truncated" in err, err
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_refusal_after_the_run_folder_is_made_leaves_no_partial_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal raised once the run's partial folder exists (here: by the trainer, given the
    built model) exits 2 with its message and leaves nothing beside the run: no .partial, no
    lock."""
    from fbdl_fast.training import trainer

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise ValueError("this model cannot be built")

    monkeypatch.setattr(trainer, "Trainer", refuse)
    data = write_posts_csv(tmp_path / "posts.csv", 80, seed=1)
    runs = tmp_path / "runs"
    argv = ["train", "--data", str(data), "--output", str(runs / "run"), "--epochs", "1"]
    err = cli_refusal(capsys, [*argv, *TINY])
    assert "this model cannot be built" in err
    assert not runs.exists() or list(runs.iterdir()) == []


HUGE = "99999999999999999999"  # 1e20: past every 64-bit size torch or the Rust core takes


@pytest.mark.parametrize(
    "flag",
    ["--hidden-dim", "--input-dim", "--num-layers", "--kernel-sizes", "--vocab-size", "--threads"],
)
def test_a_size_past_any_model_is_refused_by_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """train --FLAG 1e20: one line naming the flag and its bound (it used to be a torch or an
    OverflowError traceback), before the data is read, nothing created."""
    options = [flag, HUGE]
    if flag == "--input-dim":
        options += ["--num-heads", "1"]  # divisible, so the size is what is refused
    err = train_refusal(tmp_path, capsys, options)
    assert flag in err.splitlines()[-1], err
    assert re.search(r"at most|below 2\*\*31|more than 4096", err.splitlines()[-1]), err


def test_the_library_refuses_the_same_sizes() -> None:
    """ModelConfig, Tokenizer.train and load_run's threads refuse a size past any model in one
    ValueError naming the field, as the CLI does."""
    from fbdl_fast import load_run
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.tokenizer import Tokenizer

    with pytest.raises(ValueError, match=r"hidden_dim=100000000000000000000 .* at most 65,536"):
        ModelConfig(hidden_dim=10**20)
    with pytest.raises(ValueError, match=r"kernel_sizes=\(3, 5000\) .* at most 4,096"):
        ModelConfig(kernel_sizes=(3, 5000))
    with pytest.raises(ValueError, match=r"vocab_size=4294967296 must be a positive int below"):
        Tokenizer.train(["a post"], vocab_size=2**32)
    with pytest.raises(ValueError, match=r"threads=5000 is not accepted; expected an integer in"):
        load_run("no-such-run", threads=5000)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_batch_past_any_memory_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """predict/evaluate --batch-size 1e20: one line naming the flag and its bound (predict
    used to print islice's own message, then the library's `batch_size=`)."""
    from tiny_run import make_run

    run = make_run(tmp_path / "run")
    data = write_posts_csv(tmp_path / "posts.csv", 8, seed=0)
    argv = [command, "--run", str(run), "--data", str(data), "--batch-size", HUGE, "--quiet"]
    err = cli_refusal(capsys, argv)
    assert f"argument --batch-size: {HUGE!r} is more than 16777216 posts a batch" in err
