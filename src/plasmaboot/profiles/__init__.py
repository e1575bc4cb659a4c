"""Profiles: what goes into an image, as TOML files (Nix reads the same files).

model.py        the sections of a file with their defaults, and the resolved Profile
located_errors  a TOML or validation error as one line naming file and key
source.py       one file: read, validated, its file references found
merge.py        inheritance: lists append, "!item" removes, `unset` drops
resolve.py      a chain of files -> the resolved Profile (services, port clashes)
store.py        the search path and the chain `extends` makes
nixparity.py    proof that nix/lib/profiles.nix resolves every profile alike

Modules of plasmaboot import from the submodules; these names are for other users.
"""

from plasmaboot.profiles.model import Profile, profile_json_schema
from plasmaboot.profiles.store import ProfileStore

__all__ = ["Profile", "ProfileStore", "profile_json_schema"]
