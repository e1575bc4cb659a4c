# A resolved profile (from nix/lib/profiles.nix) -> the NixOS module of its netboot image:
# packages, kernel parameters and modules, sysctls, network, console, locales, root's
# authorized keys and the PlasmaCloud services (present, disabled unless the profile
# enables them).
profile:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  package =
    name:
    pkgs.${name} or (throw "plasmaboot: profile ${profile.label}: package '${name}' is not in nixpkgs; map it in catalog/packages.toml [nix] (\"\" drops it on Nix)");
  # "en_US.UTF-8" -> "en_US.UTF-8/UTF-8", the form glibcLocales takes.
  localeEntry =
    locale:
    let
      parts = builtins.match "[^.]+\\.(.+)" locale;
    in
    "${locale}/${if parts == null then "UTF-8" else builtins.head parts}";
  serviceOptions =
    name: svc:
    {
      enable = if svc.enable then true else lib.mkDefault false;
      settings = svc.settings;
    }
    // svc.ports
    // lib.optionalAttrs (svc.memory_max != null) { memoryMax = svc.memory_max; }
    // lib.optionalAttrs (svc.cpu_quota != null) { cpuQuota = svc.cpu_quota; };
  # network.mtu: every physical Ethernet NIC (what DHCP configures) gets it as it appears,
  # before dhcpcd brings it up; bridges, bonds, veths and taps keep their own.
  mtuRule = lib.optionalString (profile.network.dhcp && profile.network.mtu != null) ''
    ACTION=="add", SUBSYSTEM=="net", ATTR{type}=="1", DEVPATH!="/devices/virtual/*", ATTR{mtu}="${toString profile.network.mtu}"
  '';
  servicePackages = lib.filter (p: p != null) (
    map (name: config.services.${name}.package) (lib.attrNames profile.services)
  );
in
{
  imports = [
    ./netboot-base.nix
    ../modules
  ];

  networking.hostName = lib.mkDefault "plasmaboot-${profile.label}";
  networking.useDHCP = profile.network.dhcp;
  networking.usePredictableInterfaceNames = profile.network.predictable_names;

  boot.kernelParams = profile.kernel.params;
  boot.kernelModules = profile.kernel.modules;
  boot.kernel.sysctl = profile.sysctl;
  hardware.firmware = map package profile.kernel.firmware;

  systemd.services."serial-getty@${profile.console.serial}" = {
    enable = true;
    wantedBy = [ "getty.target" ];
  };

  i18n.supportedLocales = map localeEntry profile.system.locales;
  i18n.defaultLocale = builtins.head profile.system.locales;

  users.users.root.openssh.authorizedKeys.keyFiles = map (path: /. + path) profile.ssh.authorized_keys;

  # Service binaries are in the image even when their service is disabled, so an operator
  # (or nixos-anywhere) can start or install them.
  environment.systemPackages = map package profile.nixPackages ++ servicePackages;

  services = lib.mapAttrs serviceOptions profile.services // {
    udev.extraRules = mtuRule;
  };

  warnings = lib.concatMap (
    svc:
    lib.optional (svc.package_file != null) "plasmaboot: services.${svc.name}.package (${svc.package_file}) is a .deb for the Debian backend; the Nix image takes the package from the plasmacloud overlay"
  ) (lib.attrValues profile.services);
}
