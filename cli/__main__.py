"""``python -m cli ARGS`` is ``streamrec ARGS`` (how the loop starts its own processes)."""

from cli.app import main

main()
