"""Erlang/OTP-style supervision on pykka: child specs, strategies, restart intensity, backoff, breaker."""
