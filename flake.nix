# plasmaboot's NixOS netboot images: one nixosConfiguration per profile file and per
# profile × variant, generated from profiles/*.toml (a new profile file needs no edit here).
#
#   nix build .#nixosConfigurations.netboot-control-plane.config.system.build.netbootRamdisk
#   nix build .#nixosConfigurations.netboot-worker-debug.config.system.build.kernel
#
# The PlasmaCloud service packages come from the `plasmacloud` input's overlay. By default it
# is an in-repo placeholder without packages; point it at your PlasmaCloud flake:
#   --override-input plasmacloud path:/path/to/plasmacloud   (or git+https://..., github:...)
{
  description = "plasmaboot: NixOS netboot images for PlasmaCloud bare-metal nodes";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
    plasmacloud.url = "path:./nix/plasmacloud-stub";
  };

  outputs =
    {
      self,
      nixpkgs,
      plasmacloud,
    }:
    let
      system = "x86_64-linux";
      profiles = import ./nix/lib/profiles.nix { profilesDir = ./profiles; };
      netboot =
        profile:
        nixpkgs.lib.nixosSystem {
          inherit system;
          modules = [
            { nixpkgs.overlays = [ plasmacloud.overlays.default ]; }
            (import ./nix/images/netboot-profile.nix profile)
          ];
        };
    in
    {
      lib.profiles = profiles;
      nixosModules.default = ./nix/modules;
      nixosConfigurations = builtins.listToAttrs (
        map (label: {
          name = "netboot-${label}";
          value = netboot profiles.all.${label};
        }) (builtins.attrNames profiles.all)
      );
    };
}
