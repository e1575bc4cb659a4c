"""The Debian backend: mmdebstrap, the customize hook that runs inside it, and stage-1."""
