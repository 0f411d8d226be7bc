"""Observability: what the agent shows about itself.

- :mod:`.server`: ``/metrics`` and ``/status`` on ``metrics.listen``, from the event loop;
- :mod:`.exposition`: the Prometheus rendering of :class:`~agent.metrics.Metrics`;
- :mod:`.host`: the board's sensors and the process's CPU and memory;
- :mod:`.statuscmd`: ``field-agent status``, the client of ``/status``.
"""
