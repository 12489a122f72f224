"""In-memory stand-ins for our own seams, each held to the real part by a contract test."""
