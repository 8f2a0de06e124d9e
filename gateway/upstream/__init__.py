"""The adapter to the compute API: HTTP session, credentials, client, console-URL checks."""
