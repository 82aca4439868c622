"""A/B assignment: stable per user and salt, split by weight, pinned versions, safe reloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.experiments import Arm, Assigner, ExperimentConfig, Experiments

USERS = [f"user-{n}" for n in range(20_000)]


def config(salt: str = "s1", weights: tuple[float, float] = (50, 50)) -> ExperimentConfig:
    return ExperimentConfig(
        name="exp",
        salt=salt,
        arms=(Arm(name="control", weight=weights[0], model_version=1), Arm(name="treatment", weight=weights[1])),
    )


def test_a_user_always_gets_the_same_arm_across_assigners() -> None:
    first, second = Assigner(config()), Assigner(config())
    assert all(first.assign(u).name == second.assign(u).name for u in USERS[:2000])


def test_users_split_by_weight() -> None:
    assigner = Assigner(config(weights=(10, 90)))
    share = sum(assigner.assign(u).name == "control" for u in USERS) / len(USERS)
    assert share == pytest.approx(0.10, abs=0.01)


def test_a_new_salt_reshuffles_users() -> None:
    a, b = Assigner(config("s1")), Assigner(config("s2"))
    same = sum(a.assign(u).name == b.assign(u).name for u in USERS) / len(USERS)
    assert same == pytest.approx(0.5, abs=0.02)  # independent: agreement by chance only


def test_pinned_versions_and_latest() -> None:
    assert config().pinned_versions() == frozenset({1})
    assert config().arms[1].pinned_version is None


def test_no_file_means_one_default_arm_on_the_latest_model() -> None:
    experiments = Experiments(None)
    assert [arm.name for arm in experiments.config.arms] == ["default"]
    assert experiments.assigner.assign("anyone").pinned_version is None


def test_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_path = tmp_path / "exp.yaml"
    yaml_path.write_text("salt: abc\narms:\n  - {name: a, weight: 1, model_version: 3}\n  - {name: b, weight: 1}\n")
    json_path = tmp_path / "exp.json"
    json_path.write_text(json.dumps({"salt": "abc", "arms": [{"name": "a", "weight": 1}]}))
    assert Experiments(yaml_path).config.pinned_versions() == frozenset({3})
    assert Experiments(json_path).config.salt == "abc"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("salt: x\narms: []\n", "arms"),
        ("salt: x\narms:\n  - {name: a, weight: 0}\n", "weight"),
        ("salt: x\narms:\n  - {name: a, weight: 1}\n  - {name: a, weight: 1}\n", "unique"),
        ("salt: x\narm: []\n", "arm"),
        ("salt: [unclosed\n", "not valid"),
    ],
)
def test_a_bad_file_is_refused_at_start_with_the_reason(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        Experiments(path)


def test_a_reload_that_breaks_the_file_keeps_the_previous_config(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("salt: one\narms:\n  - {name: a, weight: 1}\n")
    experiments = Experiments(path)
    path.write_text("salt: two\narms: not-a-list\n")
    os.utime(path, ns=(1, 1))
    assert not experiments.reload_if_changed()
    assert experiments.config.salt == "one"
    assert experiments.error is not None and "arms" in experiments.error
    path.write_text("salt: three\narms:\n  - {name: b, weight: 1}\n")
    os.utime(path, ns=(2, 2))
    assert experiments.reload_if_changed()
    assert experiments.config.salt == "three" and experiments.error is None
