"""The public names: every one of `fbdl_fast.__all__` resolves, and none that 0.1.0 had is gone."""

from __future__ import annotations

import subprocess
import sys

import fbdl_fast

# fbdl_fast 0.1.0's __all__: code written against it keeps working.
NAMES_0_1_0 = [
    "__version__",
    "Tokenizer",
    "ModelConfig",
    "create_model",
    "create_facebook_posts_model",
    "FacebookPostsTransformer",
    "FacebookPostsLSTM",
    "FacebookPostsCNN",
    "Trainer",
    "FacebookPostsTrainer",
    "History",
    "WeightInitializer",
    "NormalizationLayers",
    "LossFunctions",
    "OptimizerFactory",
    "SchedulerFactory",
    "backend",
    "patch",
    "unpatch",
]


def test_no_public_name_of_0_1_0_is_gone() -> None:
    assert set(NAMES_0_1_0) <= set(fbdl_fast.__all__)


def test_every_public_name_resolves_in_a_fresh_process() -> None:
    """Each name of __all__ is found by `from fbdl_fast import NAME` in a new interpreter (the
    names resolve lazily, so a stale module path fails only when the name is first used), and
    `import fbdl_fast` alone loads no torch."""
    script = (
        "import sys, fbdl_fast\n"
        "assert 'torch' not in sys.modules, 'import fbdl_fast loaded torch'\n"
        "missing = [n for n in fbdl_fast.__all__ if getattr(fbdl_fast, n, None) is None]\n"
        "print(','.join(missing))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_train_and_load_run_are_the_library_functions() -> None:
    from fbdl_fast.training.loading import load_run
    from fbdl_fast.training.session import train

    assert fbdl_fast.train is train and fbdl_fast.load_run is load_run
