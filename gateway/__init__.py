"""Authenticating gateway and WebSocket proxy for VM consoles."""
