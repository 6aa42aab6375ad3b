"""``python -m symbiote.cli``."""

from symbiote.cli.main import main

main()
