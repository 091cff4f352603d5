"""``python -m roomcast`` is the ``roomcast`` command."""

from roomcast.cli import main

main()
