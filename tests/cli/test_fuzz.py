"""Fuzzing the parsers of guest-made input (hypothesis): only the project's errors.

Targets, each fed mutations of a recorded real input (line swaps, cut lines,
random bytes, numbers replaced by extreme ones) or plain random data:

* the control channel (tracer.control) and every accessor the run uses;
* an event format and the ring-buffer header (tracer.ftrace_formats);
* kallsyms text (analysis.run_symbols);
* the ftrace text trace parser (analysis.ftrace_text), through ``load_text``;
* the binary decoder, both walkers, on a recorded trace (tests/data/traces/tiny).

Any exception other than a TracedepError (or the ValueError the format parsers
document) fails.  ``TRACEDEP_FUZZ_EXAMPLES`` sets the examples per target (CI
runs a bounded number; the README's "Damaged or hostile input" has the last
campaign's result).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracedep.analysis.ftrace_text import load_text
from tracedep.errors import TracedepError
from tracedep.kimage.kallsyms import parse as read_kallsyms
from tracedep.tracer import control
from tracedep.tracer.ftrace_binary import decode
from tracedep.tracer.ftrace_formats import parse_format, parse_header_page

DATA = Path(__file__).parents[1] / "data"
TINY = DATA / "traces" / "tiny"
CONTROL = (TINY / "control.log").read_text(errors="replace")
TEXT = (DATA / "text" / "trace.txt").read_text(errors="replace")
KALLSYMS = (DATA / "text" / "kallsyms.txt").read_text(errors="replace")
RAW = (TINY / "trace" / "cpu0.raw").read_bytes()
N = int(os.environ.get("TRACEDEP_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=N <= 1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EXTREMES = ["0", "-1", "18446744073709551616", "99999999999999999999999", "0x" + "f" * 40,
            "-9223372036854775809", "", "nan", "1e400", "\x00", "%s%n"]


@st.composite
def mutated_lines(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines()
    n = draw(st.integers(1, 12))
    for _ in range(n):
        op = draw(st.sampled_from(["drop", "dup", "swap", "cut", "number", "junk"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "cut":
            lines[i] = lines[i][:draw(st.integers(0, max(len(lines[i]), 0)))]
        elif op == "number":
            import re

            nums = list(re.finditer(r"(?<![\w.])(0x[0-9a-f]+|\d+)", lines[i]))
            if nums:
                m = draw(st.sampled_from(nums))
                lines[i] = lines[i][:m.start()] + draw(st.sampled_from(EXTREMES)) + \
                    lines[i][m.end():]
        else:
            lines[i] = draw(st.text(max_size=80))
    return "\n".join(lines) + "\n"


@FUZZ
@given(st.one_of(mutated_lines(CONTROL), st.text(max_size=2000)))
def test_control_channel(text: str) -> None:
    ctl = control.parse(text)
    ctl.header_page()
    ctl.formats()
    ctl.cpu_stats()
    ctl.probe_failures()
    ctl.probe_failure_reasons()
    ctl.module_loads()
    ctl.insmod_results()
    ctl.event_status()
    ctl.file("/sys/kernel/tracing/saved_cmdlines")


@FUZZ
@given(st.one_of(mutated_lines(CONTROL), st.text(max_size=3000)))
def test_formats_and_header(text: str) -> None:
    for name, fmt in control.parse(text).formats().items():
        try:
            parse_format(name, fmt)
        except ValueError:
            pass
    try:
        parse_header_page(text)
    except ValueError:
        pass


@FUZZ
@given(st.one_of(mutated_lines(KALLSYMS), st.text(max_size=2000)))
def test_kallsyms(text: str) -> None:
    for a, t, _ in read_kallsyms(text):
        assert 0 <= a < 1 << 64 and len(t) == 1


@FUZZ
@given(st.one_of(mutated_lines(TEXT), st.text(max_size=3000)))
def test_text_trace(text: str) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(text)
    try:
        load_text(Path(fh.name))
    except TracedepError:
        pass
    finally:
        os.unlink(fh.name)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(RAW) - 1), st.integers(0, 255)), max_size=60),
       st.integers(0, len(RAW)), st.booleans())
def test_binary_decoder(flips: list[tuple[int, int]], cut: int, native: bool) -> None:
    b = bytearray(RAW)
    for at, v in flips:
        b[at] = v
    ctl = control.parse(CONTROL)
    try:
        decode({0: bytes(b[:cut])}, ctl.header_page() or "", ctl.formats(), 5, native=native)
    except TracedepError:
        pass
