"""The ``kit`` command line: thin commands over library functions."""
