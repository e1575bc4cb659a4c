"""Installing a netbooted node to its disk: disk layouts (layout.py), the plan of commands
a layout and a disk make (plan.py), the Nix side's disko configuration (disko.py), and the
install over SSH (debian.py, secrets.py, run.py)."""
