"""The in-sample guard (forensic.calibration_checks.warn_in_sample): one warning naming how many of the scored
people the calibration was fitted on, none when they are other people, and one when the file cannot tell."""

import hashlib
import warnings
from types import SimpleNamespace

import pytest

from handclip.errors import CalibrationWarning
from handclip.forensic.calibration_checks import people_in_calibration, record_names, warn_in_sample


def _calibration(*names):
    listed = [hashlib.sha256(n.encode("utf-8")).hexdigest() for n in names]
    return SimpleNamespace(summary={"path": "cal.json", **({"identity_sha256": listed} if names else {})})


def _caught(calibration, people):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = warn_in_sample(calibration, people, "manifest m.csv")
    return count, [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]


def test_people_listed_by_pid_or_by_original_name_are_counted_once_each():
    records = [SimpleNamespace(pid=1, original_id="alice"), SimpleNamespace(pid=1, original_id="alice"),
               SimpleNamespace(pid=2, original_id="bob"), SimpleNamespace(pid=3, original_id=None)]
    people = record_names(records)
    assert people == {1: {"1", "alice"}, 2: {"2", "bob"}, 3: {"3"}}
    assert people_in_calibration(_calibration("alice", "3", "zed"), people) == 2  # by name and by pid
    count, messages = _caught(_calibration("alice", "3"), people)
    assert count == 2 and messages == ["2 of the 3 identities of manifest m.csv were in the calibration cal.json: "
                                       "LRs and Cllr on them are in-sample and overstate how it holds for new people"]


def test_other_people_give_no_warning_and_an_unlisted_calibration_says_it_cannot_tell():
    people = {1: {"1"}, 2: {"2"}}
    assert _caught(_calibration("7", "8"), people) == (0, [])
    count, messages = _caught(_calibration(), people)
    assert count == 0 and len(messages) == 1 and "lists no identities" in messages[0]


@pytest.mark.parametrize("names", [("1",), ("1", "2")])
def test_the_count_is_the_number_of_shared_people(names):
    assert _caught(_calibration(*names), {1: {"1"}, 2: {"2"}, 3: {"3"}})[0] == len(names)
