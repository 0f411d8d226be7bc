"""Fixtures for the audio tests: the session ALSA testbed (see testbed.py)."""

from __future__ import annotations

import pytest

from tests.audio.testbed import alsa, alsa_testbed, pulse  # noqa: F401
from tests.support import run_only_when_selected


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_only_when_selected(
        config, items, "acoustic",
        "the acoustic-loop rig (hands-free goals, tests/audio/test_handsfree_rig.py): its "
        "own tier, `.venv/bin/pytest -m acoustic tests/audio` (CI runs it)",
    )  # fmt: skip
