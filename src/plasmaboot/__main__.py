"""Allow `python -m plasmaboot`."""

from plasmaboot.cli import main

main()
