"""The validation plan (criteria.yaml): the shipped example parses into typed rows, a bad plan is refused with one
line naming the file and the key, and a criterion decides pass/fail as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from handclip.errors import ConfigError
from handclip.validate.criteria import Criterion, read_plan

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "validation" / "example_criteria.yaml"
MINIMAL = "title: t\npopulation: p\ncriteria:\n  - {characteristic: accuracy, metric: cllr, criterion: '< 0.3'}\n"


def test_the_shipped_example_plan_parses_into_typed_rows():
    plan = read_plan(EXAMPLE)
    metrics = [row.metric for row in plan.criteria]
    assert {"cllr", "cllr_min", "cllr_cal", "devpav", "rmed_strong", "rmep_strong"} <= set(metrics)
    strong = plan.criteria[metrics.index("rmed_strong")]  # written RMED(LR>100) in the file
    assert (strong.characteristic, strong.graph, strong.criterion.op, strong.criterion.threshold) == \
        ("calibration", "lr_distribution", "<", 0.01)
    assert plan.bootstrap.level == 0.95 and plan.decide_on == "estimate"


@pytest.mark.parametrize("op, threshold, value, met", [
    ("<", 0.3, 0.29, True), ("<", 0.3, 0.3, False), ("<=", 0.3, 0.3, True), (">", 0.9, 0.95, True),
    (">=", 0.9, 0.89, False), ("<", 0.3, None, False), ("<", 0.3, float("nan"), False)])
def test_a_criterion_decides_as_written(op, threshold, value, met):
    assert Criterion(op=op, threshold=threshold).met(value) is met


@pytest.mark.parametrize("text, key", [
    (MINIMAL.replace("cllr,", "cllrr,"), r"criteria\.0\.metric: unknown metric 'cllrr'"),
    (MINIMAL.replace("'< 0.3'", "'about 0.3'"), r"criteria\.0\.criterion: a criterion is a comparison"),
    (MINIMAL.replace("accuracy", "speed"), r"criteria\.0\.characteristic"),
    (MINIMAL.replace("title: t\n", ""), r": title: Field required"),
    (MINIMAL + "bootstrap: {replicates: 5}\n", r"bootstrap\.replicates"),
    (MINIMAL + "colour: red\n", r"colour: unknown key"),
    ("title: t\npopulation: p\ncriteria: []\n", r"criteria: List should have at least 1 item"),
    ("- just\n- a list\n", r"must hold a mapping"),
    ("title: [unclosed\n", r"is not valid YAML"),
])
def test_a_bad_plan_is_refused_in_one_line_naming_file_and_key(tmp_path, text, key):
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=key) as caught:
        read_plan(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message


def test_a_missing_plan_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_plan(tmp_path / "nope.yaml")
