# Placeholder for the `plasmacloud` input: an overlay that adds no packages. Images build
# with every service present but disabled; enabling one fails with an assertion naming the
# missing package. Point the input at the real PlasmaCloud flake to get the packages:
#   nix build .#... --override-input plasmacloud path:/path/to/plasmacloud
{
  description = "plasmaboot placeholder for the PlasmaCloud flake (no packages)";
  outputs = _: {
    overlays.default = _final: _prev: { };
  };
}
