"""Network links: drive the sans-I/O protocols in :mod:`agent.proto` over real sockets."""
