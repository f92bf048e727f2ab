"""cli: the ``streamrec`` command line, the one entry point of every stage of the loop.

It sits on top of everything it starts: one module per command group, all registered in
``cli/app.py``. Heavy imports (torch, bytewax) happen inside the commands, so
``streamrec config`` stays instant.
"""
