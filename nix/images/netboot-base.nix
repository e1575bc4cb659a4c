# What every PlasmaCloud netboot image has, whatever the profile: nixpkgs' minimal netboot
# installer, root SSH with keys only, the latest kernel, no passwords, no documentation.
#
# SSH host keys are not baked in: NixOS generates them when sshd first starts
# (services.openssh.hostKeys), and a netboot system runs from RAM, so every machine gets
# its own keys at every boot.
{
  lib,
  pkgs,
  modulesPath,
  ...
}:
{
  imports = [ (modulesPath + "/installer/netboot/netboot-minimal.nix") ];

  services.openssh = {
    enable = true;
    settings = {
      PermitRootLogin = lib.mkForce "prohibit-password";
      PasswordAuthentication = lib.mkForce false;
      KbdInteractiveAuthentication = lib.mkForce false;
    };
  };

  # The installer profile gives root and `nixos` empty passwords and logs `nixos` in on the
  # console; the image is for key-only access, so lock both and drop the auto-login.
  users.users.root.initialHashedPassword = lib.mkForce "!";
  users.users.nixos.initialHashedPassword = lib.mkForce "!";
  services.getty.autologinUser = lib.mkForce null;

  boot.kernelPackages = pkgs.linuxPackages_latest;

  # The installer turns documentation on with an image-media override; force it off.
  documentation = {
    enable = lib.mkForce false;
    nixos.enable = lib.mkForce false;
    man.enable = lib.mkForce false;
    info.enable = lib.mkForce false;
    doc.enable = lib.mkForce false;
  };

  system.stateVersion = lib.mkDefault lib.trivial.release;
}
