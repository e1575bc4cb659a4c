# The one module builder for a PlasmaCloud service: `name` and its catalog `entry` give the
# options (enable, one option per named port, package, settings, limits), a system
# user/group, the config file rendered from `settings` and a systemd service.
name: entry:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.${name};
  settingsFormat = pkgs.formats.toml { };
  portOptions = lib.mapAttrs (
    portName: default:
    lib.mkOption {
      type = lib.types.port;
      inherit default;
      description = "${name}: the ${portName} it listens on (written to ${entry.config}).";
    }
  ) entry.ports;
  # Ports below 1024 (flashdns: 53) need the capability, not root.
  needsLowPort = lib.any (port: port < 1024) (map (portName: cfg.${portName}) (lib.attrNames entry.ports));
in
{
  options.services.${name} = portOptions // {
    enable = lib.mkEnableOption "${name}: ${entry.description}";
    package = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = pkgs.${entry.package} or null;
      defaultText = lib.literalExpression "pkgs.${entry.package} (from the PlasmaCloud overlay) or null";
      description = "The package providing bin/${entry.binary}.";
    };
    settings = lib.mkOption {
      inherit (settingsFormat) type;
      default = { };
      description = "Settings written to ${entry.config} (TOML), after the port options.";
    };
    memoryMax = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "512M";
      description = "systemd MemoryMax= of the service.";
    };
    cpuQuota = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "50%";
      description = "systemd CPUQuota= of the service.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.package != null;
        message = ''
          services.${name}.enable is true but there is no package for it: pkgs.${entry.package}
          does not exist. Point the flake's `plasmacloud` input at your PlasmaCloud flake
          (--override-input plasmacloud path:/your/flake) or set services.${name}.package.'';
      }
    ];

    users.users.${entry.user} = {
      isSystemUser = true;
      group = entry.user;
      description = "${name} service";
    };
    users.groups.${entry.user} = { };

    environment.etc.${lib.removePrefix "/etc/" entry.config}.source = settingsFormat.generate "${name}.toml" (
      lib.genAttrs (lib.attrNames entry.ports) (portName: cfg.${portName}) // cfg.settings
    );

    systemd.services.${name} = {
      description = entry.description;
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ config.environment.etc.${lib.removePrefix "/etc/" entry.config}.source ];
      serviceConfig =
        {
          ExecStart = "${lib.getExe' cfg.package entry.binary} --config ${entry.config}";
          User = entry.user;
          Group = entry.user;
          Restart = "on-failure";
          StateDirectory = name;
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
        }
        // lib.optionalAttrs (cfg.memoryMax != null) { MemoryMax = cfg.memoryMax; }
        // lib.optionalAttrs (cfg.cpuQuota != null) { CPUQuota = cfg.cpuQuota; }
        // lib.optionalAttrs needsLowPort { AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ]; };
    };
  };
}
