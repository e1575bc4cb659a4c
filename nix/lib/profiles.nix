# Profiles for the Nix side: reads profiles/*.toml and profiles/variants/*.toml and resolves
# inheritance exactly like src/plasmaboot/profiles.py (lists append without duplicates,
# "!item" removes, tables merge, scalars override, `unset` drops keys, several `extends`
# merged in order, the variant last). Pure Nix (builtins only): it needs no nixpkgs, so
# `nix eval` can compare it with the Python loader anywhere (tests/test_nix.py does).
#
# The Python loader validates the schema; here a wrong profile fails with `throw` naming
# the file and key for the errors that would otherwise give a confusing evaluation error.
{
  profilesDir,
  catalogDir ? ../../catalog,
}:
let
  inherit (builtins)
    attrNames
    concatMap
    elem
    filter
    foldl'
    fromTOML
    hasAttr
    isAttrs
    isList
    isString
    listToAttrs
    mapAttrs
    match
    readDir
    readFile
    removeAttrs
    stringLength
    substring
    ;

  catalog = fromTOML (readFile (catalogDir + "/services.toml"));
  nixNames = (fromTOML (readFile (catalogDir + "/packages.toml"))).nix or { };

  tomlNames =
    dir:
    let
      entries = if builtins.pathExists dir then readDir dir else { };
      isToml = name: entries.${name} == "regular" && match ".*\\.toml" name != null;
    in
    map (name: substring 0 (stringLength name - 5) name) (filter isToml (attrNames entries));

  profileNames = tomlNames profilesDir;
  variantNames = tomlNames (profilesDir + "/variants");

  display = kind: name: "${if kind == "variant" then "variants/" else ""}${name}.toml";

  find =
    kind: name:
    let
      known = if kind == "variant" then variantNames else profileNames;
      path = profilesDir + "/${if kind == "variant" then "variants/" else ""}${name}.toml";
      data = fromTOML (readFile path);
    in
    if !(elem name known) then
      throw "plasmaboot: unknown ${kind} '${name}'; known ${kind}s: ${toString known}"
    else if (data.name or name) != name then
      throw "plasmaboot: ${display kind name}: name: expected '${name}' (the file name), got '${data.name}'"
    else
      {
        inherit name kind data;
        file = display kind name;
      };

  # The files to merge for `name`, parents first (depth-first, in `extends` order).
  chain =
    name: stack:
    let
      source = find "profile" name;
      parents =
        let
          extends = source.data.extends or [ ];
        in
        if isString extends then [ extends ] else extends;
      addUnique = files: item: if elem item.file (map (f: f.file) files) then files else files ++ [ item ];
      parentFiles = foldl' (files: parent: foldl' addUnique files (chain parent (stack ++ [ name ]))) [ ] parents;
    in
    if elem name stack then
      throw "plasmaboot: ${display "profile" (lastOf stack)}: extends: cycle ${concatSep " -> " (stack ++ [ name ])}"
    else
      parentFiles ++ [ source ];

  lastOf = list: builtins.elemAt list (builtins.length list - 1);
  concatSep = builtins.concatStringsSep;

  isRemoval = item: isString item && substring 0 1 item == "!";

  mergeLists =
    base: override:
    foldl' (
      result: item:
      if isRemoval item then
        filter (x: x != substring 1 (stringLength item - 1) item) result
      else if elem item result then
        result
      else
        result ++ [ item ]
    ) base override;

  stripRemovals =
    value:
    if isList value then
      mergeLists [ ] value
    else if isAttrs value then
      mapAttrs (_: stripRemovals) value
    else
      value;

  mergeValues =
    base: override:
    if isAttrs base && isAttrs override then
      base
      // mapAttrs (
        key: value: if hasAttr key base then mergeValues base.${key} value else stripRemovals value
      ) override
    else if isList base && isList override then
      mergeLists base override
    else
      stripRemovals override;

  settable = [
    "description"
    "packages"
    "ssh"
    "kernel"
    "network"
    "console"
    "system"
    "sysctl"
    "service_defaults"
    "services"
  ];

  applyUnset =
    source: merged:
    foldl' (
      result: path:
      let
        parts = match "([^.]+)(\\.(.*))?" path;
        section = builtins.head parts;
        key = builtins.elemAt parts 2;
      in
      if !(elem section settable) then
        throw "plasmaboot: ${source.file}: unset: unknown setting '${path}'"
      else if key == null then
        removeAttrs result [ section ]
      else if isAttrs (result.${section} or null) then
        result // { ${section} = removeAttrs result.${section} [ key ]; }
      else
        result
    ) merged (source.data.unset or [ ]);

  # A file named by a profile, relative to the profile directory and inside it.
  fileRef =
    source: ref:
    if substring 0 1 ref == "/" || match "(.*/)?\\.\\.(/.*)?" ref != null then
      throw "plasmaboot: ${source.file}: '${ref}' must be a path inside the profile directory"
    else
      toString (profilesDir + "/${ref}");

  absolutizeRefs =
    source: data:
    data
    // (
      if data ? ssh.authorized_keys then
        { ssh = data.ssh // { authorized_keys = map (fileRef source) data.ssh.authorized_keys; }; }
      else
        { }
    )
    // (
      if data ? services then
        {
          services = mapAttrs (
            _: section:
            if (section.package or "") != "" then
              section // { package = fileRef source section.package; }
            else
              section
          ) data.services;
        }
      else
        { }
    );

  mergeSource =
    merged: source:
    mergeValues (applyUnset source merged) (
      absolutizeRefs source (removeAttrs source.data [ "name" "extends" "unset" ])
    );

  resolveServices =
    file: merged:
    let
      defaults = merged.service_defaults or { };
      sections = merged.services or { };
      unknown = filter (name: !(hasAttr name catalog)) (attrNames sections);
    in
    if unknown != [ ] then
      throw "plasmaboot: ${file}: services.${builtins.head unknown}: unknown service; the catalog has: ${toString (attrNames catalog)}"
    else
      mapAttrs (
        name: section:
        let
          entry = catalog.${name};
        in
        {
          inherit name;
          inherit (entry) description binary config user;
          enable = section.enable or false;
          ports = mapAttrs (key: default: section.${key} or default) entry.ports;
          package_name = entry.package;
          package_file = section.package or null;
          settings = section.settings or { };
          memory_max = section.memory_max or defaults.memory_max or null;
          cpu_quota = section.cpu_quota or defaults.cpu_quota or null;
        }
      ) sections;

  checkPortClashes =
    file: services:
    let
      claims = concatMap (
        svc:
        if svc.enable then
          map (key: {
            port = svc.ports.${key};
            owner = "services.${svc.name}.${key}";
          }) (attrNames svc.ports)
        else
          [ ]
      ) (builtins.attrValues services);
      claim =
        claimed: c:
        let
          port = toString c.port;
        in
        if hasAttr port claimed then
          throw "plasmaboot: ${file}: ${c.owner}: port ${port} is also claimed by ${claimed.${port}}"
        else
          claimed // { ${port} = c.owner; };
    in
    builtins.seq (foldl' claim { } claims) services;

  # Abstract package names -> nixpkgs attribute names; "" means "not on Nix" (dropped).
  nixPackageName = name: nixNames.${name} or name;

  resolve =
    name: variant:
    let
      profileChain = chain name [ ];
      files = profileChain ++ (if variant == null then [ ] else [ (find "variant" variant) ]);
      merged = foldl' mergeSource { } files;
      leaf = lastOf profileChain;
      kernel = merged.kernel or { };
      network = merged.network or { };
      console = merged.console or { };
      system = merged.system or { };
      packages = merged.packages or [ ];
      baseDescription = foldl' (
        found: source: if (source.data.description or "") != "" then source.data.description else found
      ) "" profileChain;
      variantSource = lastOf files;
    in
    rec {
      inherit name variant packages;
      label = if variant == null then name else "${name}-${variant}";
      description =
        if variant == null then
          baseDescription
        else
          "${baseDescription} (${variant} variant: ${variantSource.data.description or variant})";
      extends = builtins.genList (i: (builtins.elemAt profileChain i).name) (
        builtins.length profileChain - 1
      );
      # in order, once each (two abstract names may map to one attribute)
      nixPackages = mergeLists [ ] (filter (p: p != "") (map nixPackageName packages));
      authorized_keys = (merged.ssh or { }).authorized_keys or [ ];
      kernel_params = kernel.params or [ ];
      kernel_modules = kernel.modules or [ ];
      include_modules = kernel.include_modules or [ ];
      exclude_modules = kernel.exclude_modules or [ ];
      firmware = kernel.firmware or [ ];
      dhcp = network.dhcp or true;
      predictable_names = network.predictable_names or true;
      serial = console.serial or "ttyS0";
      baud = console.baud or 115200;
      locales = system.locales or [ "en_US.UTF-8" ];
      documentation = system.documentation or false;
      sysctl = merged.sysctl or { };
      services = checkPortClashes variantSource.file (resolveServices leaf.file merged);
    };

  # Every profile, and every profile with every variant, by label.
  all = listToAttrs (
    concatMap (
      name:
      [
        {
          inherit name;
          value = resolve name null;
        }
      ]
      ++ map (variant: {
        name = "${name}-${variant}";
        value = resolve name variant;
      }) variantNames
    ) profileNames
  );
in
{
  inherit
    catalog
    profileNames
    variantNames
    resolve
    all
    ;
}
