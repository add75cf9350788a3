"""Choose the QEMU accelerator: KVM only when a probe proves it boots within seconds.

On some hosts ``/dev/kvm`` exists and opens but a vCPU never runs; TCG is
always the fallback.  The probe result is cached per host boot.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from pathlib import Path

from tracedep.common.cache import cache_root
from tracedep.common.files import atomic_write
from tracedep.common.machines import Machine
from tracedep.vm.qemu import machine_args

log = logging.getLogger(__name__)

_HOST_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_works(machine: Machine, kernel_image: Path, timeout: float = 8.0) -> bool:
    if _HOST_ARCH.get(platform.machine()) != machine.arch:
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cache = cache_root() / "accel.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    key = f"{_boot_id()}:{machine.arch}"
    if key in known:
        return bool(known[key])
    # A kernel with no root panics within a second or two when KVM works.
    cmd = [*machine_args(machine, "kvm", 256), "-serial", "stdio",
           "-kernel", str(kernel_image), "-append", f"console={machine.console} panic=-1"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout, text=True,
                             errors="replace").stdout
        ok = "Kernel panic" in out or "VFS:" in out
    except subprocess.TimeoutExpired:
        ok = False
    log.info("KVM probe: %s", "works" if ok else "unusable, using TCG")
    known[key] = ok
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps(known), fsync=False)
    return ok


def choose_accel(machine: Machine, kernel_image: Path, wanted: str = "auto") -> str:
    if wanted in ("tcg", "kvm"):
        return wanted
    return "kvm" if kvm_works(machine, kernel_image) else "tcg"
