"""Fixtures for the hardware-port tests: the session ALSA testbed (tests/audio/testbed.py)."""

from tests.audio.testbed import alsa, alsa_testbed, pulse  # noqa: F401
