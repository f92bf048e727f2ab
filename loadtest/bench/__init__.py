"""Benchmarks behind ``streamrec bench``: each returns the one JSON line its command prints."""
