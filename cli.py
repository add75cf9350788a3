"""The ``tracedep`` command line.  Exit codes are decided here and only here.

0  no findings (or, for ``trace``, a complete trace)
1  findings
2  usage or input error
3  the run itself failed (no boot, guest crash or hang, QEMU failure)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tracedep.errors import TracedepError

log = logging.getLogger("tracedep")


def _add_guest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="x86_64", help="x86_64 (default) or arm64")
    p.add_argument("--abi", default=None,
                   help="Debian kernel ABI, e.g. 6.1.0-56 (default: pinned in vm/machines.py)")
    p.add_argument("--kernel", type=Path, default=None,
                   help="boot this kernel image (bzImage/Image) instead of Debian's")
    p.add_argument("--kernel-modules", type=Path, default=None,
                   help="with --kernel: its lib/modules/<release> directory")
    p.add_argument("--kernel-build", type=Path, default=None,
                   help="with --kernel: its build tree, to build --module-src against")
    p.add_argument("--vmlinux", type=Path, default=None, help="vmlinux with DWARF")
    p.add_argument("--module-src", type=Path, action="append", default=[],
                   help="a kbuild directory of driver modules to test (repeatable; default: "
                        "the bundled example drivers)")
    p.add_argument("--workload", type=Path, default=None,
                   help="shell script run in the guest instead of load/settle/unload")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds before a guest that has not powered off is killed")
    p.add_argument("--transport", choices=("socket", "ringbuf"), default="socket")
    p.add_argument("--smp", type=int, default=2)
    p.add_argument("--memory", type=int, default=1024, help="guest memory, MiB")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    p.add_argument("--out", type=Path, required=True, help="run directory (new or empty)")


def _trace_options(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    from tracedep.tracer.session import TraceOptions
    from tracedep.vm.kernel import user_kernel

    kernel = None
    if a.kernel is not None:
        kernel = user_kernel(a.kernel, a.kernel_modules, a.kernel_build, a.vmlinux)
    return TraceOptions(
        out=a.out, arch=a.arch, abi=a.abi, kernel=kernel, module_srcs=a.module_src,
        workload=a.workload, timeout=a.timeout, transport=a.transport, smp=a.smp,
        mem_mb=a.memory, accel=a.accel,
    )


def cmd_trace(a: argparse.Namespace) -> int:
    from tracedep.tracer.session import trace

    res = trace(_trace_options(a))
    counts = res.manifest.get("event_counts", {})
    lost = res.manifest.get("lost", {}).get("total", 0)
    print(f"tracedep: trace in {res.run_dir}: {sum(counts.values())} events, {lost} lost, "
          f"guest {res.ending}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tracedep", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace", help="boot a kernel with the modules under test and trace it")
    _add_guest_args(t)
    t.set_defaults(func=cmd_trace)
    return p


class _Parser(argparse.ArgumentParser):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage line
        return 0 if e.code == 0 else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="tracedep: %(message)s",
    )
    try:
        rc: int = args.func(args)
        return rc
    except TracedepError as e:
        print(f"tracedep: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tracedep: interrupted", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
