"""Guest machines as data: one frozen description per architecture.

Everything that differs between architectures lives in :data:`MACHINES`;
code elsewhere reads fields, it does not test ``arch``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    arch: str  # tracedep's name: x86_64, arm64
    debian_arch: str  # dpkg architecture of the kernel packages
    flavour: str  # Debian kernel flavour
    qemu: str
    qemu_package: str  # Debian package that ships ``qemu``
    machine: str
    cpu: str
    console: str  # kernel console device
    kernel_format: str  # bzImage or Image: informational, both boot with -kernel
    kernel_in_pkg: str  # path of the kernel inside the image package, {abi}/{flavour} expanded
    kbuild_arch: str  # ARCH= for kbuild
    cross_compile: str  # CROSS_COMPILE= prefix, "" when native
    busybox_package: str  # busybox-static of the guest's arch
    panic_device: str  # QEMU device that raises GUEST_PANICKED
    panic_module: str  # guest module that drives it
    virtio_serial_device: str
    # kprobe fetch-args: the first three integer arguments and the return address
    arg1: str
    arg2: str
    arg3: str
    retaddr: str
    call_insn_size: int  # return address − this = call site
    text_symbol: str  # kallsyms symbol used to measure the KASLR offset
    kprobe_reports_irqs_off: bool  # kprobe handlers run with IRQs masked (arm64 BRK)
    extra_append: str = ""
    # fetch-arg appended to every kprobe: the interrupted context's IRQ mask, so the
    # decoder can tell IRQs-off where the record's own flags cannot ("" = not needed)
    irq_state_fetch: str = ""
    # a known-steppable offset into the calibration function for a mid-function
    # kprobe (fixed-width ISAs only; 0 = none): see tracer.calibration
    calibration_mid_offset: int = 0
    # variable-width ISAs: the instructions from a function's start to its body (a
    # regular expression over its bytes in vmlinux); the calibration's mid-function
    # probe goes right past them (tracer.calibration.mid_offset)
    entry_prologue: bytes = b""
    # the IRQ-state fetch of mid-function probes where it differs from irq_state_fetch:
    # x86's entry probes run from ftrace with the probed code's flags, but a
    # mid-function probe runs from the int3 handler (IRQs off, NMI context)
    mid_irq_state_fetch: str = ""

    @property
    def mid_irq_fetch(self) -> str:
        """The IRQ-state fetch-arg of a mid-function kprobe ("" = none needed)."""
        return self.mid_irq_state_fetch or self.irq_state_fetch


MACHINES: dict[str, Machine] = {
    "x86_64": Machine(
        arch="x86_64",
        debian_arch="amd64",
        flavour="cloud-amd64",
        qemu="qemu-system-x86_64",
        qemu_package="qemu-system-x86",
        machine="q35",
        cpu="max",
        console="ttyS0",
        kernel_format="bzImage",
        kernel_in_pkg="boot/vmlinuz-{abi}-{flavour}",
        kbuild_arch="x86",
        cross_compile="",
        busybox_package="busybox-static",
        panic_device="pvpanic-pci",
        panic_module="pvpanic-pci",
        virtio_serial_device="virtio-serial-pci",
        arg1="%di",
        arg2="%si",
        arg3="%dx",
        retaddr="+0(%sp)",
        call_insn_size=5,
        text_symbol="_text",
        kprobe_reports_irqs_off=False,
        # EFLAGS of the interrupted context: bit 9 (IF) set = IRQs on
        mid_irq_state_fetch="efl=%flags:x64",
        # endbr64 (IBT kernels), then the 5-byte __fentry__ call (a NOP once ftrace
        # has patched it; either form in the file)
        entry_prologue=rb"(?:\xf3\x0f\x1e\xfa)?(?:\xe8[\x00-\xff]{4}|\x0f\x1f\x44\x00\x00)",
    ),
    "arm64": Machine(
        arch="arm64",
        debian_arch="arm64",
        flavour="cloud-arm64",
        qemu="qemu-system-aarch64",
        qemu_package="qemu-system-arm",
        machine="virt",
        cpu="cortex-a57",
        console="ttyAMA0",
        kernel_format="Image",
        kernel_in_pkg="boot/vmlinuz-{abi}-{flavour}",
        kbuild_arch="arm64",
        cross_compile="aarch64-linux-gnu-",
        busybox_package="busybox-static:arm64",
        panic_device="pvpanic-pci",
        panic_module="pvpanic-pci",
        virtio_serial_device="virtio-serial-pci",
        arg1="%x0",
        arg2="%x1",
        arg3="%x2",
        retaddr="%x30",
        call_insn_size=4,
        text_symbol="_stext",
        kprobe_reports_irqs_off=True,
        # PSTATE (SPSR of the BRK exception): bit 7 is the I (IRQ mask) bit
        irq_state_fetch="pst=%pstate:x64",
        # past the two ftrace NOPs and paciasp/bti
        calibration_mid_offset=12,
    ),
}


def machine_for(arch: str) -> Machine:
    try:
        return MACHINES[arch]
    except KeyError:
        from tracedep.errors import InputError

        raise InputError(
            f"unknown --arch {arch!r}; known: {', '.join(sorted(MACHINES))}"
        ) from None
