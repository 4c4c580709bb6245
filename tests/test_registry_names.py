"""config.py names the registries' entries itself (OPTIMIZER_NAMES, SCHEDULER_NAMES,
CLASSIFICATION_LOSS_NAMES, INITIALIZER_NAMES) instead of importing the registries, which import
torch and whose modules import config: each tuple must stay its registry's keys.
"""

from __future__ import annotations

import subprocess
import sys

from fbdl_fast import config
from fbdl_fast.models.init import INITIALIZERS
from fbdl_fast.training.losses import CLASSIFICATION_LOSSES, LOSSES
from fbdl_fast.training.optim import OPTIMIZERS, SCHEDULERS


def test_each_name_tuple_is_its_registrys_keys() -> None:
    assert tuple(OPTIMIZERS) == config.OPTIMIZER_NAMES
    assert tuple(SCHEDULERS) == config.SCHEDULER_NAMES
    assert tuple(INITIALIZERS) == config.INITIALIZER_NAMES
    assert config.CLASSIFICATION_LOSS_NAMES == CLASSIFICATION_LOSSES
    assert set(CLASSIFICATION_LOSSES) <= set(LOSSES)  # each one a loss the registry builds


def test_checking_a_config_imports_no_registry() -> None:
    """ModelConfig checks its names without importing training/ or models/ (the import circle
    config -> losses/optim/init -> config is gone)."""
    code = (
        "import sys\n"
        "from fbdl_fast.config import ModelConfig\n"
        "ModelConfig(optimizer_type='lion', scheduler_type='linear', loss='dice', init='sparse')\n"
        "loaded = [m for m in sys.modules if m.startswith(('fbdl_fast.training', "
        "'fbdl_fast.models'))]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
