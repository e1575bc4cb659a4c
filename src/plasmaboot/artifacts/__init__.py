"""Artifact sets: their layout on disk (layout), what manifest.json holds (manifest), and
atomic publishing (publish). Every stage after the build reads a set through these."""
