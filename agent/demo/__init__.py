"""``field-agent demo``: the whole agent on simulated hardware against the sandbox.

- :mod:`.bench`: the bench (sandbox servers + the real agent + mock pins), the script
  and the live loop;
- :mod:`.keys`: the keyboard as the device's buttons;
- :mod:`.view`: the live terminal view.
"""

# The demo board's wiring (BCM numbers), shared by the bench and the view.
PTT_PIN, MUTE_PIN, UP_PIN, DOWN_PIN, STATUS_LED, TALK_LED = 17, 5, 6, 13, 27, 22
CHANNEL_UP_PIN, CHANNEL_DOWN_PIN = 23, 24  # keys ] and [
# the demo's channels (videosdk.rooms): the first is the room the demo starts in
DEMO_ROOMS = (("demo-room", "Demo"), ("demo-room-2", "Ops"), ("demo-room-3", "Medics"))
EMERGENCY_PIN = 16  # held 2 s (key e): raises an emergency, or cancels it
