"""Faithful local fakes of the vendor servers, for tests, the demo and benchmarks.

They listen on loopback only and enforce what the vendors' documents say.
"""
