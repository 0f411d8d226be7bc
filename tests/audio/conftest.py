"""Fixtures for the audio tests: the session ALSA testbed (see testbed.py)."""

from tests.audio.testbed import alsa, alsa_testbed, pulse  # noqa: F401
