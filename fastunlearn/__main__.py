"""``python -m fastunlearn``: the same as the ``fastunlearn`` command."""

from fastunlearn.cli import main

main()
