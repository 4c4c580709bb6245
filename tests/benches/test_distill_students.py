"""benches/studies/distill_students.py: every step's command is one the CLI parses as meant,
and the table's gap recovered is (student - cnn) / (teacher - cnn)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fbdl_fast.cli.main import build_parser
from tiny_run import load_bench_script

study = load_bench_script("studies/distill_students.py")


def test_every_step_is_a_command_the_cli_parses() -> None:
    """Each step's command line parses; students distil from the teacher's folder, the MiniLM
    students keep 2 of its layers, and --augment reaches the augmented steps only."""
    args = argparse.Namespace(epochs=4, teacher_lr=1e-4, max_length=32, augment=2)
    out = Path("/runs/study")
    for step in study.STEPS:
        argv = study.command(step, Path("train.csv"), out, args)[3:]  # after python -m fbdl_fast
        parsed = build_parser().parse_args(argv)
        assert parsed.output == str(out / step) and parsed.threads == 1
        if step in ("teacher", "cnn"):
            assert argv[0] == "train"
            assert parsed.model == ("minilm" if step == "teacher" else "cnn")
            continue
        assert argv[0] == "distill" and parsed.teacher == str(out / "teacher")
        with_augment = step.endswith("augment") and not step.endswith("no-augment")
        assert parsed.augment == (2 if with_augment or step == "cnn-teacher-embeddings" else 0)
        assert parsed.model == ("minilm" if step.startswith("minilm") else "cnn")
        if step.startswith("minilm"):
            assert parsed.student_layers == 2
            continue  # a MiniLM student is made of the teacher's embeddings anyway
        assert parsed.student_embeddings == ("teacher" if "embeddings" in step else "own")


def test_table_gives_the_gap_recovered_and_the_speed_ratio() -> None:
    """teacher 0.8, cnn 0.5, a student at 0.71: 70% of the gap; 4,000 posts/s against the
    teacher's 250: 16.0x."""
    row = {"train_wall_s": 1.0}
    results = {
        "teacher": {**row, "macro_f1": 0.8, "predict_posts_per_s_1_thread": 250.0},
        "cnn": {**row, "macro_f1": 0.5, "predict_posts_per_s_1_thread": 5000.0},
        "minilm-L2": {**row, "macro_f1": 0.71, "predict_posts_per_s_1_thread": 4000.0},
    }
    lines = study.table(results).splitlines()
    student = next(line for line in lines if line.startswith("| minilm-L2 "))
    assert student.split(" | ")[1:5] == ["0.710", "70%", "4,000", "16.0"]
    assert "cnn-distilled" not in study.table(results)  # steps not run are left out
