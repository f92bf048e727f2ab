"""loadtest/bench."""
