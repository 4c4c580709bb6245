"""torch.distributed on one CPU: 2 gloo processes equal one process with the global batch.

R ranks with batch B and one process with batch R*B see the same batches (the sampler cuts the
single-process batches between ranks), and the trainer weights each rank's loss by its share of
the global batch, so the weights agree to float rounding (the all-reduce sums in another order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fbdl_fast import ModelConfig
from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.data import BucketBatchSampler, PostsDataset, make_loader
from fbdl_fast.training.distributed import DistContext, all_reduce_sum, init_from_env, teardown
from fbdl_fast.training.trainer import METRICS_LOG, Trainer
from tiny_run import Bag, bag_config, tiny_model_args, write_posts_csv

# ----------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("n", [37, 40, 33])
def test_rank_shards_are_the_halves_of_the_single_process_batches(n: int) -> None:
    lengths = np.random.default_rng(0).integers(1, 30, size=n).tolist()
    single = BucketBatchSampler(lengths, 8, shuffle=True, seed=3)
    shards = [
        BucketBatchSampler(lengths, 4, shuffle=True, seed=3, num_replicas=2, rank=r)
        for r in range(2)
    ]
    for sampler in (single, *shards):
        sampler.set_epoch(2)
    batches = [list(s) for s in shards]
    assert len(batches[0]) == len(batches[1]) == len(shards[0]) == len(single)  # DDP needs it
    for a, b, whole in zip(*batches, single):
        if len(whole) >= 2:
            assert a + b == whole and abs(len(a) - len(b)) <= 1
        else:  # 33 = 4 * 8 + 1: the lone post of the last batch goes to both ranks
            assert a == b == whole


def test_evaluation_shards_repeat_nothing() -> None:
    lengths = list(range(1, 18))  # 17 posts: the last batch of 8 x 2 holds one post
    shards = [
        BucketBatchSampler(lengths, 4, shuffle=False, num_replicas=2, rank=r) for r in range(2)
    ]
    seen = [list(s) for s in shards]
    assert [len(s) for s in shards] == [len(b) for b in seen] == [3, 2]
    assert sorted(i for batches in seen for b in batches for i in b) == list(range(17))


def test_rank_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"rank=2 is invalid for num_replicas=2; expected 0..1"):
        BucketBatchSampler([1, 2], 1, num_replicas=2, rank=2)


def test_single_process_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() == DistContext(rank=0, world_size=1)
    assert all_reduce_sum(torch.tensor([2.5])).item() == 2.5
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two' is not an integer"):
        init_from_env()


# ----------------------------------------------------------------------------- the Trainer

CLASSES, VOCAB = 3, 26


def _dataset(n: int, seed: int, noisy: bool = False) -> PostsDataset:
    """Class c uses tokens 1 + 8c .. 8 + 8c; noisy: the labels are then redrawn at random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=n)
    ids = [1 + 8 * c + rng.integers(0, 8, size=rng.integers(2, 7)) for c in labels]
    if noisy:  # validation that training cannot fit: its loss rises, early stopping fires
        labels = rng.integers(0, CLASSES, size=n)
    return PostsDataset(ids, labels.tolist())


def _config() -> ModelConfig:
    return bag_config(
        vocab_size=VOCAB,
        num_classes=CLASSES,
        max_seq_length=8,
        learning_rate=0.3,
        optimizer_type="sgd",
        scheduler_type=None,
        gradient_clip=0.0,
        max_epochs=6,
        patience=1,
        seed=5,
    )


def _fit(num_replicas: int, rank: int, batch_size: int) -> Trainer:
    # 45 posts, global batch 8: the last holds 5, cut 3 + 2: ranks weigh their shares.
    train = make_loader(_dataset(45, 1), batch_size, True, 7, num_replicas=num_replicas, rank=rank)
    val = make_loader(
        _dataset(19, 2, noisy=True), batch_size, False, num_replicas=num_replicas, rank=rank
    )
    torch.manual_seed(0)
    trainer = Trainer(Bag(VOCAB, CLASSES), _config(), device="cpu")
    trainer.fit(train, val)
    return trainer


def _gloo_threads() -> list[str]:
    """The names of this process's threads that gloo started (gloo_tcp_loop, pt_gloo_runloop)."""
    tasks = Path("/proc/self/task")
    names = [(tasks / task / "comm").read_text().strip() for task in os.listdir(tasks)]
    return sorted(name for name in names if "gloo" in name)


def _train_rank(rank: int, out: str) -> None:
    """Fit rank `rank` of 2 and save its history and weights; its Trainer (and DDP wrapper)
    goes when this returns."""
    trainer = _fit(2, rank, 4)
    history = trainer.history.to_dict()
    history["epoch_times"] = []
    torch.save({"history": history, "model": trainer.model.state_dict()}, f"{out}/{rank}.pt")


def _worker(rank: int, port: int, out: str) -> None:
    # The store at MASTER_ADDR:MASTER_PORT is the test's own (as torchrun's agent serves its
    # ranks): no rank binds a port, so none can find it taken.
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)}
        | {"WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "GLOO_SOCKET_IFNAME": "lo"}
        | {"TORCHELASTIC_USE_AGENT_STORE": "True"}
    )
    torch.set_num_threads(1)
    ctx = init_from_env("cpu", timeout_s=60)
    try:
        _train_rank(rank, out)
    finally:
        teardown(ctx)
    # What gloo still runs once the group is torn down (nothing, when teardown freed it).
    Path(f"{out}/{rank}.threads.json").write_text(json.dumps(_gloo_threads()))


def test_two_gloo_ranks_train_and_stop_like_one_process(tmp_path: Path) -> None:
    """2 gloo ranks of batch 4 stop early at the epoch one process of batch 8 does, with its
    metrics and weights; teardown frees each rank's group, leaving no gloo thread running."""
    # Port 0: the system picks a free port and the store keeps it bound while the ranks run
    # (a port found free, closed and passed on could be taken in between).
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    torch.multiprocessing.start_processes(
        _worker, args=(store.port, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    del store
    # teardown freed each rank's group: its gloo threads are joined, not left to drop their
    # last works' tensors while the interpreter exits (which aborted a rank now and then).
    for r in range(2):
        assert json.loads((tmp_path / f"{r}.threads.json").read_text()) == [], r
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    single = _fit(1, 0, 8)
    expected = single.history
    # Every rank holds the whole run's metrics (reduced), so every rank decided alike.
    assert ranks[0]["history"] == ranks[1]["history"]
    got = ranks[0]["history"]
    assert expected.stopped_early and got["stopped_early"]
    assert len(got["val_losses"]) == expected.epochs < _config().max_epochs
    assert got["best_epoch"] == expected.best_epoch
    assert got["val_losses"] == pytest.approx(expected.val_losses, abs=1e-5)
    assert got["train_accs"] == pytest.approx(expected.train_accs, abs=1e-9)
    assert got["val_f1s"] == pytest.approx(expected.val_f1s, abs=1e-9)
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["model"][name], tensor, rtol=0, atol=1e-5)
        assert torch.equal(ranks[0]["model"][name], ranks[1]["model"][name])


# ----------------------------------------------------------------------------- the CLI, torchrun

# A transformer: LayerNorm; a CNN's BatchNorm normalises per rank, as in any DDP run. On the CPU
# (gloo) even where CUDA is: two ranks on one GPU would need two GPUs.
TINY = [
    *tiny_model_args("transformer", max_length=24),
    "--device",
    "cpu",
    "--dropout",
    "0",
    "--epochs",
    "2",
    "--threads",
    "1",
]


def test_cli_train_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    # 181 train posts: the last global batch of 16 holds 5
    data = write_posts_csv(tmp_path / "posts.csv", 201, seed=5)
    ddp, one = tmp_path / "runs" / "ddp", tmp_path / "runs" / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    train = ["train", "--data", str(data), "--output", str(ddp), *TINY, "--batch-size", "8"]
    result = subprocess.run(
        [*torchrun, "2", "-m", "fbdl_fast", *train],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run saved to") == 1  # rank 0 alone speaks
    single = ["train", "--data", str(data), "--output", str(one), *TINY, "--batch-size", "16"]
    assert main(single) == 0

    assert sorted(p.name for p in ddp.parent.iterdir()) == ["ddp", "one"]  # nothing left over
    log = [json.loads(line) for line in (ddp / METRICS_LOG).read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]  # one writer: each epoch logged once
    assert json.loads((ddp / "config.json").read_text())["training"]["world_size"] == 2
    got, expected = load_checkpoint(ddp / "last.pt"), load_checkpoint(one / "last.pt")
    assert got["epoch"] == expected["epoch"] == 2
    assert got["history"]["val_losses"] == pytest.approx(
        expected["history"]["val_losses"], abs=1e-6
    )
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=1e-5, msg=name)
    # Rank 0's run report evaluates best.pt on every validation post, not on its shard.
    val_posts = json.loads((ddp / "config.json").read_text())["data"]["val_posts"]
    tables = [
        (run / "report.md").read_text().split("### Per class")[1].split("### Confusion")[0]
        for run in (ddp, one)
    ]
    assert "| macro avg |" in tables[0] and tables[0].rstrip().endswith(f" | {val_posts} |")
    assert tables[0] == tables[1]
