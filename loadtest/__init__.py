"""loadtest: recorded-traffic replay, synthetic streams and load tests with SLO gates."""
