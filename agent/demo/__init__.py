"""``field-agent demo``: the whole agent on simulated hardware against the sandbox.

- :mod:`.bench`: the bench (sandbox servers + the real agent + mock pins), the script
  and the live loop;
- :mod:`.keys`: the keyboard as the device's buttons;
- :mod:`.view`: the live terminal view.
"""

# The demo board's wiring (BCM numbers), shared by the bench and the view.
PTT_PIN, MUTE_PIN, UP_PIN, DOWN_PIN, STATUS_LED, TALK_LED = 17, 5, 6, 13, 27, 22
EMERGENCY_PIN = 16  # held 2 s (key e): raises an emergency, or cancels it
