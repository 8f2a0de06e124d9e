"""A simulated OpenStack cloud for tests and the demo; the gateway never imports it."""
