"""plasmaboot: netboot image builder for PlasmaCloud's bare-metal nodes."""

__version__ = "0.1.0"
