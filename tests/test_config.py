"""ModelConfig: the design's defaults and usage example, validation messages, dict round trip."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from fbdl_fast.config import ModelConfig
from fbdl_fast.training.losses import FocalLoss, create_loss


def test_defaults_are_the_designs() -> None:
    config = ModelConfig()
    design = {
        "input_dim": 768,
        "hidden_dim": 512,
        "num_layers": 6,
        "num_heads": 8,
        "dropout": 0.1,
        "learning_rate": 1e-4,
        "weight_decay": 1e-5,
        "batch_size": 32,
        "max_epochs": 100,
        "patience": 10,
        "gradient_clip": 1.0,
        "use_mixed_precision": True,
    }
    assert {name: getattr(config, name) for name in design} == design
    # the design's optimiser (AdamW) and the completions added since
    assert (config.optimizer_type, config.scheduler_type, config.loss) == (
        "adamw",
        "cosine",
        "cross_entropy",
    )
    assert (config.use_focal_loss, config.focal_gamma, config.focal_alpha) == (False, 2.0, None)
    assert (config.class_weights, config.label_smoothing, config.seed) == (None, 0.0, 42)
    assert config.loss_name == "cross_entropy"


def test_design_usage_example() -> None:
    config = ModelConfig(
        input_dim=768,
        hidden_dim=512,
        num_layers=6,
        num_heads=8,
        dropout=0.1,
        learning_rate=1e-4,
        vocab_size=10000,
        num_classes=5,
    )
    assert (config.vocab_size, config.num_classes, config.input_dim // config.num_heads) == (
        10000,
        5,
        96,
    )
    # "Use focal loss for class imbalance"
    config.use_focal_loss = True
    assert config.loss_name == "focal"
    assert isinstance(create_loss(config), FocalLoss)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"input_dim": 100, "num_heads": 8}, r"input_dim=100 is not divisible by num_heads=8"),
    ({"hidden_dim": 0}, r"ModelConfig\.hidden_dim=0 is invalid; expected a positive integer"),
    ({"num_layers": 2.5}, r"ModelConfig\.num_layers=2\.5 is invalid"),
    ({"num_classes": 1}, r"ModelConfig\.num_classes=1 is invalid; expected an integer >= 2"),
    ({"patience": -1}, r"ModelConfig\.patience=-1 is invalid"),
    (
        {"dropout": -0.1},
        r"ModelConfig\.dropout=-0\.1 is invalid; expected a probability in \[0, 1\)",
    ),
    ({"dropout": 1.0}, r"ModelConfig\.dropout=1\.0 is invalid"),
    # a number written as text (a config read by hand) is named, not a comparison's TypeError
    ({"dropout": "0.1"}, r"ModelConfig\.dropout='0\.1' is invalid; expected a probability"),
    ({"label_smoothing": "0.1"}, r"ModelConfig\.label_smoothing='0\.1' is invalid"),
    (
        {"learning_rate": -1e-3},
        r"ModelConfig\.learning_rate=-0\.001 is invalid; expected a positive",
    ),
    ({"learning_rate": 0.0}, r"ModelConfig\.learning_rate=0\.0 is invalid"),
    (
        {"learning_rate": 1e300},  # finite, but past float32 inside an optimizer's step
        r"ModelConfig\.learning_rate=1e\+300 is invalid; expected a positive number up to 1e\+30",
    ),
    (
        {"weight_decay": -1e-5},
        r"ModelConfig\.weight_decay=-1e-05 is invalid; expected a number >= 0",
    ),
    ({"gradient_clip": -1.0}, r"ModelConfig\.gradient_clip=-1\.0 is invalid"),
    ({"focal_gamma": -2.0}, r"ModelConfig\.focal_gamma=-2\.0 is invalid"),
    ({"label_smoothing": 1.0}, r"ModelConfig\.label_smoothing=1\.0 is invalid"),
    (
        {"class_weights": [1.0]},
        r"ModelConfig\.class_weights=\[1\.0\] is invalid; expected num_classes=2",
    ),
    ({"focal_alpha": [0.5, -0.5]}, r"ModelConfig\.focal_alpha=\[0\.5, -0\.5\] is invalid"),
    ({"focal_alpha": -0.25}, r"ModelConfig\.focal_alpha=-0\.25 is invalid"),
    (
        {"pad_token_id": 10},
        r"ModelConfig\.pad_token_id=10 is invalid; expected an id in \[0, vocab",
    ),
    (
        {"optimizer_type": "lamb"},
        r"ModelConfig\.optimizer_type='lamb' is not known; accepted: adabelief, adagrad, adam, "
        r"adamw, lion, rmsprop",
    ),
    (
        {"scheduler_type": "warm"},
        r"ModelConfig\.scheduler_type='warm' .*accepted: cosine, linear, one_cycle, plateau, step "
        r"or none \(a constant rate\)",
    ),
    ({"loss": "focall"}, r"ModelConfig\.loss='focall' .*accepted: cross_entropy, dice, focal$"),
    # a registered loss that cannot train a classifier (criterion(logits, labels)) is refused too
    ({"loss": "triplet"}, r"ModelConfig\.loss='triplet' .*accepted: cross_entropy, dice, focal$"),
    ({"init": "he"}, r"ModelConfig\.init='he' .*accepted: kaiming_normal, kaiming_uniform"),
    ({"amp_dtype": "fp8"}, r"ModelConfig\.amp_dtype='fp8' is invalid"),
    ({"kernel_sizes": ()}, r"ModelConfig\.kernel_sizes=\(\) is invalid"),
]


@pytest.mark.parametrize(("values", "message"), BAD, ids=[next(iter(v)) for v, _ in BAD])
def test_invalid_values_raise_naming_the_field(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=10, **values)


def test_valid_alternatives_are_accepted() -> None:
    config = ModelConfig(
        input_dim=64,
        num_heads=4,
        num_classes=3,
        optimizer_type="sgd",
        scheduler_type=None,
        loss="dice",
        init="orthogonal",
        class_weights=[1.0, 2.0, 0.5],
        focal_alpha=[0.2, 0.3, 0.5],
        label_smoothing=0.1,
    )
    assert (config.scheduler_type, config.loss_name, config.init) == (None, "dice", "orthogonal")


def test_validate_catches_a_later_assignment() -> None:
    config = ModelConfig()
    config.dropout = 1.5
    with pytest.raises(ValueError, match=r"ModelConfig\.dropout=1\.5"):
        config.validate()


def _custom() -> ModelConfig:
    return ModelConfig(
        input_dim=96,
        hidden_dim=64,
        num_layers=2,
        num_heads=4,
        num_classes=3,
        vocab_size=500,
        optimizer_type="rmsprop",
        scheduler_type="one_cycle",
        use_focal_loss=True,
        class_weights=[1.0, 1.5, 2.0],
        focal_alpha=0.25,
        kernel_sizes=(2, 3),
        extra={"run": "a", "tags": ["x"]},
    )


def test_to_dict_from_dict_round_trip() -> None:
    config = _custom()
    values = config.to_dict()
    assert values["hidden_dim"] == 64 and values["extra"] == {"run": "a", "tags": ["x"]}
    assert set(values) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert ModelConfig.from_dict(values) == config
    # through JSON too: lists come back where tuples went in, and are turned back into tuples
    again = ModelConfig.from_dict(json.loads(config.to_json()))
    assert again == config and again.kernel_sizes == (2, 3)
    assert again.loss_name == "focal"


def test_from_dict_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['hiden_dim'\]"):
        ModelConfig.from_dict({"hiden_dim": 64})
    with pytest.raises(ValueError, match=r"ModelConfig\.dropout=2"):
        ModelConfig.from_dict({"dropout": 2})
