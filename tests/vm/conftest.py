"""The VM tier runs only when asked for by marker: ``.venv/bin/pytest -m vm tests/vm``.

A plain ``pytest`` (or any ``-m`` expression that does not select ``vm``) skips these
tests at collection, so the fast tier never builds an image or boots QEMU.
"""

from __future__ import annotations

import re

import pytest


def _vm_selected(config: pytest.Config) -> bool:
    expr = config.option.markexpr or ""
    return bool(re.search(r"\bvm\b", expr)) and not re.search(r"\bnot\s+vm\b", expr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _vm_selected(config):
        return
    skip = pytest.mark.skip(reason="VM tier: run it with `.venv/bin/pytest -m vm tests/vm`")
    for item in items:
        if item.get_closest_marker("vm"):
            item.add_marker(skip)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The VM tier's timings and sizes (set by test_vm.py's fixture), after the results."""
    for line in getattr(config, "vm_tier_summary", []):
        terminalreporter.write_line(line)
