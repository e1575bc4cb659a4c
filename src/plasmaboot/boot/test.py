"""boot-test: PXE-boot a built image in QEMU, log in over SSH and check that the running
node is what it was built from (manifest.json and its resolved profile; boot.guest). Reads
only the artifact set: the input checks, the network the boots go through (QEMU's user
network and an HTTP server on loopback, or pxe-server in a namespace: boot.provisioning),
the boots, and the report (boot.report).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from pydantic import ValidationError

from plasmaboot.artifacts.layout import BOOT_FILES, MANIFEST
from plasmaboot.artifacts.manifest import Manifest, read_manifest
from plasmaboot.boot.guest import check_host_keys, guest_checks, read_host_key
from plasmaboot.boot.netns import Netns
from plasmaboot.boot.provisioning import (
    DEFAULT_SUBNET,
    Provisioned,
    ProvisioningPlan,
    plan_provisioning,
    provisioning_network,
    wait_for_report,
    write_known_hosts,
)
from plasmaboot.boot.qemu import (
    DEFAULT_MEMORY_MIB,
    QEMU,
    Accelerator,
    Firmware,
    GuestNetwork,
    Nic,
    ProbeResult,
    PxeVm,
    UserNetwork,
    VmConfig,
    cpu_model,
    cpu_needs_kvm,
    free_port,
    guest_panic,
    kvm_usable,
    probe_accelerator,
    require_cpu_model,
    require_ovmf,
    require_rom,
)
from plasmaboot.boot.report import BootRecord, BootReport, write_report
from plasmaboot.boot.ssh import Ssh, wait_for_ssh
from plasmaboot.checks import Check, failed, passed
from plasmaboot.errors import UserError, WorkError
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile
from plasmaboot.run import require_tool
from plasmaboot.serve.app import ServerThread

BOOT_TIMEOUT = {Accelerator.TCG: 300.0, Accelerator.KVM: 120.0}
SHOWN_HASH = 12  # hex digits of a content hash in a note
SSH_PORT = 22

# --------------------------------------------------------------------------------------
# Input


class Network(StrEnum):
    """How the guest PXE-boots: QEMU's user-mode network (its DHCP and TFTP, serve on
    loopback), or pxe-server (dnsmasq's DHCP and TFTP, serve) in a namespace of its own."""

    USER = "user"
    NETNS = "netns"


@dataclass(frozen=True)
class BootTestOptions:
    label: str
    artifacts: Path
    identity: Path
    memory_mib: int = DEFAULT_MEMORY_MIB
    nic: Nic = Nic.VIRTIO
    cpu: str | None = None  # QEMU CPU model; None: host under KVM, qemu64 under TCG
    boots: int = 1
    report: Path | None = None
    timeout: float | None = None
    # --profile (and --variant) as its files resolve now: only compared with what was built
    current_profile: Profile | None = None
    network: Network = Network.USER
    firmware: Firmware = Firmware.BIOS
    hostname: str | None = None  # --network netns: the machine's; None: the label
    netns_subnet: str = DEFAULT_SUBNET
    profiles_dirs: tuple[Path, ...] = ()  # the global --profiles-dir, passed to pxe-server

    @property
    def set_dir(self) -> Path:
        return self.artifacts / self.label

    @property
    def report_path(self) -> Path:
        return self.report or self.artifacts / f"boot-test-{self.label}.json"

    @property
    def workdir(self) -> Path:
        """Logs of the run (serial consoles, firmware, QEMU, access log), beside the report."""
        return self.report_path.parent / f"boot-test-{self.label}"


def validate(options: BootTestOptions) -> Manifest:
    """Everything that can be wrong with the input, checked before QEMU starts; the set's
    manifest, whose resolved profile the node is checked against."""
    if not options.set_dir.is_dir():
        found = (
            sorted(p.name for p in options.artifacts.iterdir() if (p / MANIFEST).is_file())
            if (options.artifacts.is_dir())
            else []
        )
        raise UserError(
            f"{options.set_dir}: no artifact set for {options.label!r}",
            hint=f"build it first, or pick one of: {', '.join(found)}"
            if found
            else "build it first (plasmaboot build --profile ...) or pass --artifacts DIR",
        )
    for name in (*BOOT_FILES, MANIFEST):
        if not (options.set_dir / name).is_file():
            raise UserError(
                f"{options.set_dir / name}: missing; an artifact set needs "
                f"{', '.join((*BOOT_FILES, MANIFEST))}",
                hint="rebuild the image",
            )
    try:
        manifest = read_manifest(options.set_dir)
    except (ValidationError, ValueError) as exc:
        raise UserError(
            f"{options.set_dir / MANIFEST}: not a valid manifest ({exc.__class__.__name__})",
            hint="rebuild the image",
        ) from exc
    if options.current_profile is not None:
        require_same_profile(manifest, options.current_profile)
    if not options.identity.is_file():
        raise UserError(
            f"--identity {options.identity}: no such private key file",
            hint="pass the private key whose public key was built into the image",
        )
    if options.boots < 1:
        raise UserError(f"--boots {options.boots}: expected 1 or more")
    require_tool(QEMU)
    require_tool("ssh")
    require_firmware(options)
    if options.cpu is not None:
        require_cpu_model(options.cpu)
    if cpu_needs_kvm(options.cpu) and (no_kvm := kvm_usable()) is not None:
        raise UserError(
            f"--cpu {options.cpu}: the host CPU model needs KVM, and here there is {no_kvm}",
            hint="leave --cpu out (qemu64 under TCG) or pick a model such as max",
        )
    return manifest


def require_firmware(options: BootTestOptions) -> None:
    """SeaBIOS boots from the NIC's iPXE ROM; OVMF from its own PXE, on the pxe-server path."""
    if options.firmware is Firmware.BIOS:
        require_rom(options.nic)
        return
    if options.network is not Network.NETNS:
        raise UserError(
            "--firmware uefi: boots through --network netns only (OVMF's PXE fetches iPXE "
            "over TFTP from pxe-server's dnsmasq)",
            hint="add --network netns (as root), or leave --firmware out",
        )
    if options.nic is not Nic.VIRTIO:
        raise UserError(
            f"--nic {options.nic} --firmware uefi: OVMF has no driver of its own for this "
            "NIC, and the NIC's iPXE ROM is left out so that the firmware's PXE boots",
            hint="leave --nic out (virtio)",
        )
    require_ovmf()


def plan_network(options: BootTestOptions, manifest: Manifest) -> ProvisioningPlan | None:
    """--network netns: the namespace, its addresses and the inventory's machine, checked
    (root, dnsmasq, the iPXE loaders, the profile pxe-server will look up); None for the
    user network."""
    if options.network is Network.USER:
        given = [
            f"{name} {value}"
            for name, value, default in (
                ("--hostname", options.hostname, None),
                ("--netns-subnet", options.netns_subnet, DEFAULT_SUBNET),
            )
            if value != default
        ]
        if given:
            raise UserError(
                f"{given[0]}: only means something with --network netns",
                hint="add --network netns, or leave it out",
            )
        return None
    return plan_provisioning(
        options.label,
        manifest.profile,
        manifest.variant,
        options.hostname,
        options.netns_subnet,
        options.profiles_dirs,
    )


def profile_words(name: str, variant: str | None) -> str:
    return f"{name} --variant {variant}" if variant else name


def require_same_profile(manifest: Manifest, current: Profile) -> None:
    """--profile (and --variant) must name the profile the set was built from."""
    if (current.name, current.variant) == (manifest.profile, manifest.variant):
        return
    raise UserError(
        f"--profile {profile_words(current.name, current.variant)}: the set {manifest.label} "
        f"was built from --profile {profile_words(manifest.profile, manifest.variant)}",
        hint="name the profile the set was built from, or leave --profile out",
    )


def rebuilt_note(manifest: Manifest, current: Profile) -> str | None:
    """One line when the profile's files now resolve to another content hash than the one
    the image was built from; boot-test still tests what was built."""
    now = current.content_hash()
    if now == manifest.content_hash:
        return None
    return (
        f"note: profile {profile_words(current.name, current.variant)} now resolves to "
        f"{now[:SHOWN_HASH]}, this image was built from {manifest.content_hash[:SHOWN_HASH]}; "
        "testing what was built"
    )


# --------------------------------------------------------------------------------------
# The network the boots go through


@dataclass(frozen=True)
class Lab:
    """Where the boots happen: the HTTP server's log (the watcher reads it), how a guest is
    plugged in, and how its sshd is reached."""

    access_log: Path
    identity: Path
    http_port: int = 0  # the user network's HTTP server on loopback
    provisioned: Provisioned | None = None  # the namespace with pxe-server
    last_boot: dict[str, str] = field(default_factory=dict)  # the last reported boot id

    @property
    def netns(self) -> Netns | None:
        return self.provisioned.netns if self.provisioned is not None else None

    def attach(self) -> GuestNetwork:
        """A network for one boot (the user network forwards a fresh port to its SSH)."""
        if self.provisioned is not None:
            return self.provisioned.guest
        return UserNetwork(self.http_port, free_port())

    def ssh(self, network: GuestNetwork, log: Log) -> Ssh:
        if self.provisioned is not None:
            address, space = self.provisioned.address, self.provisioned.netns
            return Ssh(SSH_PORT, self.identity, log, host=address, netns=space)
        assert isinstance(network, UserNetwork)
        return Ssh(network.ssh_port, self.identity, log)


@contextmanager
def open_lab(
    options: BootTestOptions, plan: ProvisioningPlan | None, identity: Path, log: Log
) -> Iterator[Lab]:
    """The HTTP server on loopback for QEMU's user network; or the namespace, its tap and
    pxe-server. Everything is stopped on exit, whatever ended the run."""
    if plan is None:
        access_log = options.workdir / "access.log"
        with ServerThread(options.artifacts, access_log=access_log) as server:
            yield Lab(access_log, identity, http_port=server.port)
        return
    with provisioning_network(plan, options.artifacts, options.workdir, log) as provisioned:
        yield Lab(provisioned.server_log, identity, provisioned=provisioned)


# --------------------------------------------------------------------------------------
# The boots


def panicked(vm: PxeVm) -> str:
    """ "the guest kernel crashed: <its line>; " when the console shows a crash (the
    failure that follows is its consequence), else ""."""
    line = guest_panic(vm.serial_text())
    return f"the guest kernel crashed: {line}; " if line else ""


def boot_check_name(index: int) -> str:
    return f"boot {index}: PXE to SSH"


def boot_once(
    index: int,
    options: BootTestOptions,
    probe: ProbeResult,
    lab: Lab,
    log: Log,
    on_ssh: Callable[[Ssh], None],
) -> tuple[BootRecord, Check, list[str]]:
    """One PXE boot until SSH answers; `on_ssh` runs while the guest is up."""
    network = lab.attach()
    config = VmConfig(
        workdir=options.workdir / f"boot{index}",
        label=options.label,
        network=network,
        accelerator=probe.accelerator,
        memory_mib=options.memory_mib,
        nic=options.nic,
        cpu=options.cpu,
        firmware=options.firmware,
    )
    ssh = lab.ssh(network, log)
    timeout = options.timeout or BOOT_TIMEOUT[probe.accelerator]
    host_key: str | None = None
    name = boot_check_name(index)
    with PxeVm(config, access_log=lab.access_log, log=log, netns=lab.netns) as vm:
        try:
            wait_for_ssh(vm, ssh, timeout)
        except WorkError as exc:
            check = failed(name, panicked(vm) + exc.message)
        else:
            vm.watch.mark("ssh_reachable")
            seconds = vm.watch.events["ssh_reachable"]
            ssh, checked = strict_ssh(ssh, lab, config.workdir, log)
            logged_in, out = ssh.login()
            if logged_in:
                check = passed(name, f"SSH answered after {seconds:.0f}s{checked}")
                on_ssh(ssh)
                host_key = read_host_key(ssh)
            else:
                detail = (
                    f"the SSH server answered after {seconds:.0f}s but refused the key "
                    f"{options.identity}: {out}"
                )
                check = failed(name, panicked(vm) + detail)
        logs = {
            "serial": str(config.serial_log),
            "firmware": str(config.firmware_log),
            "qemu": str(config.qemu_log),
        }
        if lab.provisioned is not None:
            logs["pxe-server"] = str(lab.provisioned.server_log)
        # The packet capture (~30 MB: every packet's headers, the initrd's included) has
        # done its job once SSH answered; a failed boot keeps it, to show what the guest sent.
        if not check.passed:
            logs["network"] = str(config.packet_log)
        record = BootRecord(
            index=index,
            ssh_host=ssh.host,
            ssh_port=ssh.port,
            events=vm.watch.events,
            phases=vm.watch.phases(),
            host_key=host_key,
            logs=logs,
        )
    packets = vm.watch.packets
    if packets is not None and packets.unreadable is not None:
        log.info(f"{packets.unreadable}: SSH was probed without seeing the guest's lease")
    if check.passed:
        config.packet_log.unlink(missing_ok=True)
    return record, check, vm.argv


def strict_ssh(ssh: Ssh, lab: Lab, workdir: Path, log: Log) -> tuple[Ssh, str]:
    """Through pxe-server the node reports its host keys: connect with
    StrictHostKeyChecking=yes against them (and say so in the check). No report (an image
    that stacks no per-node layer): as before, with a line in the log."""
    if lab.provisioned is None:
        return ssh, ""
    record = wait_for_report(lab.provisioned, after=lab.last_boot.get("boot"))
    if record is None:
        log.info("no host-key report from the node: connecting without StrictHostKeyChecking")
        return ssh, ""
    lab.last_boot["boot"] = record.boot
    known = write_known_hosts(workdir / "known_hosts", lab.provisioned, record)
    log.info(f"host keys reported by the node ({len(record.keys)}): {known}")
    return replace(ssh, known_hosts=known), ", host key checked against the node's report"


def kvm_gave_out(probe: ProbeResult, record: BootRecord, reached: Check) -> bool:
    """A KVM boot that failed before the kernel was even downloaded: KVM's fault."""
    return (
        probe.accelerator is Accelerator.KVM
        and reached.failed
        and "kernel_fetched" not in record.events
    )


# The crash QEMU's multi-threaded TCG causes, not the image: "Oops: int3" while another
# vCPU patches kernel text (seen about once in 50 boots here, in scheduler code). Any other
# crash, or this one under KVM, is the image's and fails at once.
TCG_CRASH = "Oops: int3"


def tcg_crashed(probe: ProbeResult, reached: Check) -> bool:
    """A TCG boot that failed because the guest kernel died of TCG_CRASH."""
    return (
        probe.accelerator is Accelerator.TCG
        and reached.failed
        and reached.detail.startswith("the guest kernel crashed: ")
        and TCG_CRASH in reached.detail.split("; ", 1)[0]
    )


def with_note(check: Check, note: str) -> Check:
    return check.model_copy(update={"detail": f"{check.detail} ({note})"})


def private_copy(identity: Path, workdir: Path) -> Path:
    """ssh refuses a private key others can read (a shared or read-only copy often is):
    use a 0600 copy of it in the run's own directory."""
    copy = workdir / "identity"
    copy.touch(mode=0o600)
    copy.write_bytes(identity.read_bytes())
    return copy


def through(options: BootTestOptions, plan: ProvisioningPlan | None) -> str:
    """The announce line's words for the network and firmware."""
    if plan is None:
        return ""
    return (
        f" ({options.firmware}) through pxe-server in the network namespace {plan.netns}, "
        f"as {plan.machine.hostname} at {plan.address}"
    )


def run_boot_test(
    options: BootTestOptions,
    announce: Callable[[str], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> BootReport:
    """Validate, boot `options.boots` times, check, write the JSON report, return it.
    `announce` hears one line once the input is valid and the boot starts; `notice` hears
    the one-line note when --profile's files no longer resolve to what was built."""
    manifest = validate(options)
    plan = plan_network(options, manifest)
    note = rebuilt_note(manifest, options.current_profile) if options.current_profile else None
    if note is not None and notice is not None:
        notice(note)
    if announce is not None:
        how = through(options, plan)
        announce(f"booting {options.label} in QEMU{how} (logs: {options.workdir}) ...")
    if options.workdir.exists():
        shutil.rmtree(options.workdir)
    options.workdir.mkdir(parents=True)
    identity = private_copy(options.identity, options.workdir)
    checks: list[Check] = []
    boots: list[BootRecord] = []
    memory: dict[str, int] = {}
    argv: list[str] = []
    with Log(options.workdir / "boot-test.log", subject=options.label) as log:
        probe = probe_accelerator(options.workdir, log=log)
        log.info(f"accelerator: {probe.accelerator} ({probe.reason})")

        def first_boot_checks(ssh: Ssh) -> None:
            if plan is None:
                found, seen = guest_checks(ssh, manifest)
            else:  # the inventory named it, and the firmware was chosen
                hostname, firmware = plan.machine.hostname, str(options.firmware)
                found, seen = guest_checks(ssh, manifest, hostname=hostname, firmware=firmware)
            checks.extend(found)
            memory.update(seen)

        # /dev/kvm opened but KVM failed the probe: TCG cannot run the host CPU model
        blocked = cpu_needs_kvm(options.cpu) and probe.accelerator is not Accelerator.KVM
        if blocked:
            detail = f"--cpu {options.cpu} needs KVM, and KVM failed: {probe.reason}"
            checks.append(failed(boot_check_name(1), detail))
        with open_lab(options, None if blocked else plan, identity, log) as lab:
            for index in range(1, (0 if blocked else options.boots) + 1):
                on_ssh = first_boot_checks if index == 1 else lambda ssh: None
                boot_args = (lab, log, on_ssh)
                record, reached, argv = boot_once(index, options, probe, *boot_args)
                if kvm_gave_out(probe, record, reached) and not cpu_needs_kvm(options.cpu):
                    # KVM passed the probe but the guest died before its kernel arrived:
                    # on these machines KVM can fail late in the firmware. Fall back to TCG.
                    probe = ProbeResult(
                        Accelerator.TCG,
                        f"KVM passed the probe but the guest stopped early "
                        f"({reached.detail.splitlines()[0]}); fell back to TCG",
                    )
                    log.info(f"accelerator: {probe.accelerator} ({probe.reason})")
                    shutil.rmtree(options.workdir / f"boot{index}", ignore_errors=True)
                    record, reached, argv = boot_once(index, options, probe, *boot_args)
                if tcg_crashed(probe, reached):
                    # QEMU's, not the image's (qemu.PANIC_MARKERS): boot once more, and
                    # keep the crash in the check's words either way
                    crash = reached.detail.split("; ", 1)[0]
                    log.info(f"boot {index}: {crash}: a known TCG failure, booting once more")
                    shutil.rmtree(options.workdir / f"boot{index}", ignore_errors=True)
                    record, reached, argv = boot_once(index, options, probe, *boot_args)
                    reached = with_note(reached, f"the first try: {crash} under TCG")
                boots.append(record)
                checks.insert(index - 1, reached)
                if not reached.passed:
                    break
        if options.boots > 1 and len(boots) == options.boots:
            checks.append(check_host_keys([b.host_key for b in boots]))
    report = BootReport(
        label=options.label,
        profile=manifest.profile,
        variant=manifest.variant,
        accelerator=str(probe.accelerator),
        accelerator_reason=probe.reason,
        cpu=cpu_model(options.cpu, probe.accelerator),
        nic=str(options.nic),
        network=str(options.network),
        firmware=str(options.firmware),
        memory_mib=options.memory_mib,
        qemu_command=argv,
        boots=boots,
        memory=memory,
        checks=tuple(checks),
        report_path=str(options.report_path),
    )
    write_report(report, options.report_path)
    return report
