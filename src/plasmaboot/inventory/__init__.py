"""The machine inventory: which machine (by MAC) boots which profile, with its host name,
static address, extra kernel parameters, keys and labels (model), read and checked from
machines.toml (load)."""
