"""Sans-I/O wire protocols: parse and build messages, hold session state, do no I/O."""
