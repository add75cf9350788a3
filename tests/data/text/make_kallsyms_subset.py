"""Write the few kallsyms lines a text-trace fixture needs (see README.md).

usage: python3 tests/data/text/make_kallsyms_subset.py RUN_DIR OUT MODULE_LINES TRACE...

RUN_DIR/kallsyms.gz is the run's core-kernel kallsyms (at that boot's KASLR
addresses); MODULE_LINES holds the module's own /proc/kallsyms lines, which the
workload printed to the console.  Kept: every core symbol the traces name or
contain an address of, the symbol after each (so sizes come out as the kernel
prints them), _text and one syscall wrapper (the architecture).
"""

from __future__ import annotations

import bisect
import gzip
import re
import sys

NAME = re.compile(r"(?:=> |\(|call_site=|function=|<- |: )([A-Za-z_][\w.]*)(?:\+0x|\s|\)|:|$)",
                  re.M)
ADDR = re.compile(r"(?:ret=0x|<|call_site=0x|=> 0x)(ffffffff[0-9a-f]{8})")
MODULE_SPACE = 0xFFFFFFFFC0000000


def main() -> None:
    run, out, modfile, *texts = sys.argv[1:]
    with gzip.open(f"{run}/kallsyms.gz", "rt") as fh:
        lines = fh.read().splitlines()
    core = []
    for ln in lines:
        p = ln.split(maxsplit=2)
        if len(p) == 3 and "[" not in p[2] and p[1] not in "aAuU":
            core.append((int(p[0], 16), p[2], ln))
    core.sort(key=lambda e: e[0])
    keys = [e[0] for e in core]
    byname: dict[str, list[int]] = {}
    for i, e in enumerate(core):
        byname.setdefault(e[1], []).append(i)
    text = "".join(open(t).read() for t in texts)
    want: set[int] = set()
    for n in set(NAME.findall(text)) | {"_text", "_stext", "_etext", "__x64_sys_read"}:
        want.update(byname.get(n, []))
    for a in {int(a, 16) for a in ADDR.findall(text)}:
        i = bisect.bisect_right(keys, a) - 1
        if i >= 0 and a < MODULE_SPACE:
            want.add(i)
    for i in list(want):
        j = i + 1
        while j < len(core) and core[j][0] == core[i][0]:
            j += 1
        if j < len(core):
            want.add(j)
    mods = open(modfile).read().splitlines()
    with open(out, "w") as f:
        f.write("\n".join([core[i][2] for i in sorted(want)] + mods) + "\n")


if __name__ == "__main__":
    main()
