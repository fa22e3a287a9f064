"""Every method of the registry with every task on tiny models (part 1 of 2)."""

from __future__ import annotations

import pytest

from tests.helpers.runs import check_every_method

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("config_name", ["sentiment", "ner", "seq2seq"])
def test_every_method_trains_what_it_says_on_every_task(tmp_path, shallow_checkpoints, config_name):
    check_every_method(tmp_path, shallow_checkpoints, config_name)
