"""The VM tier runs only when asked for by marker: ``.venv/bin/pytest -m vm tests/vm``.

A plain ``pytest`` (or any ``-m`` expression that does not select ``vm``) skips these
tests at collection, so the fast tier never builds an image or boots QEMU.
"""

from __future__ import annotations

import pytest

from tests.support import run_only_when_selected


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_only_when_selected(
        config, items, "vm", "VM tier: run it with `.venv/bin/pytest -m vm tests/vm`"
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The VM tier's timings and sizes (set by test_vm.py's fixture), after the results."""
    for line in getattr(config, "vm_tier_summary", []):
        terminalreporter.write_line(line)
