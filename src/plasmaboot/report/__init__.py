"""Reports over what the builds left: the build history (history.py), the figures and plots
of `plasmaboot report` (figures.py, render.py), `plasmaboot diff` (diff.py) and the
Prometheus text of `build --metrics-file` (metrics.py). It reads artifacts (manifests and the
history) only, never profile files or a backend."""
