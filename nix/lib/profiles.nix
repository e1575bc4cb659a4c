# Profiles for the Nix side: reads profiles/*.toml and profiles/variants/*.toml and resolves
# inheritance exactly like src/plasmaboot/profiles/ (lists append without duplicates,
# "!item" removes, tables merge, scalars override, `unset` drops keys, several `extends`
# merged in order, the variant last). Pure Nix (builtins only): it needs no nixpkgs, so
# `nix eval` can compare it with the Python loader anywhere (`plasmaboot check` does).
#
# The result has the shape of the Python side's resolved Profile (profile.kernel.params,
# profile.network.dhcp, ...), with every default filled in from ./profile-defaults.json:
# the Python model's defaults, written by `plasmaboot schema --defaults` (and proven current
# by `plasmaboot check`). So a new setting needs no line here.
#
# The Python loader validates the schema; here a wrong profile fails with `throw` naming
# the file and key for the errors that would otherwise give a confusing evaluation error.
{
  profilesDir,
  catalogDir ? ../../catalog,
  defaultsFile ? ./profile-defaults.json,
}:
let
  inherit (builtins)
    attrNames
    concatMap
    elem
    filter
    foldl'
    fromJSON
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
  # { profile = <default of every mergeable key>; service = <defaults of a service section>; }
  defaults = fromJSON (readFile defaultsFile);
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

  settable = attrNames defaults.profile ++ [ "description" ];

  # `unset` entries as key paths, as the Python loader reads them: "sysctl.fs.file-max" is
  # [ "sysctl" "fs.file-max" ], "services.iam.port" is [ "services" "iam" "port" ].
  splitFirst =
    text:
    let
      parts = match "([^.]+)(\\.(.*))?" text;
    in
    [ (builtins.head parts) ] ++ (if builtins.elemAt parts 2 == null then [ ] else [ (builtins.elemAt parts 2) ]);

  unsetPath =
    source: path:
    let
      parts = splitFirst path;
      head = builtins.head parts;
    in
    if !(elem head settable) then
      throw "plasmaboot: ${source.file}: unset: unknown setting '${path}'"
    else if head == "services" && builtins.length parts == 2 then
      [ head ] ++ splitFirst (lastOf parts)
    else
      parts;

  dropPath =
    data: path:
    let
      head = builtins.head path;
      rest = builtins.tail path;
    in
    if !(isAttrs data) || !(hasAttr head data) then
      data
    else if rest == [ ] then
      removeAttrs data [ head ]
    else
      data // { ${head} = dropPath data.${head} rest; };

  applyUnset =
    source: merged:
    foldl' (result: path: dropPath result (unsetPath source path)) merged (source.data.unset or [ ]);

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
    file: settings:
    let
      limits = settings.service_defaults;
      unknown = filter (name: !(hasAttr name catalog)) (attrNames settings.services);
      orLimit = value: limit: if value != null then value else limit;
    in
    if unknown != [ ] then
      throw "plasmaboot: ${file}: services.${builtins.head unknown}: unknown service; the catalog has: ${toString (attrNames catalog)}"
    else
      mapAttrs (
        name: written:
        let
          entry = catalog.${name};
          section = defaults.service // written;
        in
        {
          inherit name;
          inherit (entry) description binary config user;
          inherit (section) enable settings;
          ports = mapAttrs (key: default: section.${key} or default) entry.ports;
          package_name = entry.package;
          package_file = section.package;
          memory_max = orLimit section.memory_max limits.memory_max;
          cpu_quota = orLimit section.cpu_quota limits.cpu_quota;
        }
      ) settings.services;

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

  # Every mergeable key with its default under what the files set (tables key by key).
  withDefaults =
    merged:
    mapAttrs (
      key: default: if isAttrs default then default // (merged.${key} or { }) else merged.${key} or default
    ) defaults.profile;

  resolve =
    name: variant:
    let
      profileChain = chain name [ ];
      files = profileChain ++ (if variant == null then [ ] else [ (find "variant" variant) ]);
      settings = withDefaults (foldl' mergeSource { } files);
      leaf = lastOf profileChain;
      baseDescription = foldl' (
        found: source: if (source.data.description or "") != "" then source.data.description else found
      ) "" profileChain;
      variantSource = lastOf files;
    in
    # service_defaults is applied into the services, as on the Python side
    removeAttrs settings [ "service_defaults" ]
    // {
      inherit name variant;
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
      nixPackages = mergeLists [ ] (filter (p: p != "") (map nixPackageName settings.packages));
      services = checkPortClashes variantSource.file (resolveServices leaf.file settings);
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
