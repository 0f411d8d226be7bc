"""Hardware behind typed ports, each with a real and a simulated implementation."""
