"""field-agent: the voice field-device agent."""

import sys

__version__ = "0.1.0"

# httpx imports its command-line client (httpx._main, which loads click, rich and pygments:
# about 6 MB RSS) whenever those three are installed, e.g. next to the demo's rich; the
# agent never runs that client. A None entry in sys.modules makes that one import fail,
# which httpx expects (httpx.main then says how to install the CLI); nothing else changes.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
