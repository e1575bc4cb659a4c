# The PlasmaCloud service modules: one NixOS module per service in catalog/services.toml,
# all made by ./service.nix, so a service's name, ports and user are declared once (in the
# catalog, which the Python side reads too).
{ ... }:
let
  catalog = builtins.fromTOML (builtins.readFile ../../catalog/services.toml);
in
{
  imports = map (name: import ./service.nix name catalog.${name}) (builtins.attrNames catalog);
}
