"""The one place where benchmarks/ scripts write docs/benchmarks.md.

Each script owns one "## <title>" section. ``record`` replaces that section (or appends it)
and keeps every other section as it is. The section starts with the date, the machine
(lscpu model name and CPU count), the load average at the end of the run (the CPUs may be
shared with other jobs, which inflates the figures) and the exact command; then come the
blocks the script passes: a ``str`` is written as a markdown paragraph, a list of strings as
an indented (code) block.

    from benchmarks._record import record          # or: from _record import record
    record("Data throughput", "python benchmarks/data_throughput.py", lines)
"""
from __future__ import annotations

import datetime
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from typing import Sequence, Union

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by a script in benchmarks/; it names the date, machine and command.\n"

Block = Union[str, Sequence[str]]


def machine() -> str:
    """``'<lscpu model name>, <n> CPUs (<m> usable)'``; platform's answer when lscpu is absent."""
    model, cpus = "", 0
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", "").strip()
        cpus = int(fields.get("CPU(s)", "0").strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model}, {cpus or os.cpu_count()} CPUs ({usable} usable), {simd_features()}"


def simd_features() -> str:
    """``AVX-512 yes, VNNI yes`` from /proc/cpuinfo: int8 and oneDNN speeds depend on them."""
    from utils.console import cpu_flags
    flags = cpu_flags()
    if flags is None:
        return "AVX-512 unknown, VNNI unknown"
    yes = lambda flag: "yes" if flag in flags else "no"  # noqa: E731
    return f"AVX-512 {yes('avx512f')}, VNNI {yes('avx512_vnni')}"


def load_average() -> str:
    """1, 5 and 15-minute load averages as in ``uptime`` ("n/a" where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python benchmarks/<script> <args>`` as the user typed it (``argv`` None: sys.argv)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(a) for a in args)])


def section_text(title: str, command: str, blocks: Sequence[Block], when: str | None = None) -> str:
    """The markdown of one section (ends with one newline)."""
    if when is None:
        when = (f"{datetime.date.today()} on {machine()}, load average {load_average()} at the end "
                "(the CPUs may be shared with other jobs)")
    out = [f"## {title}", "", f"{when}; command:", "", f"    {command}", ""]
    for block in blocks:
        if isinstance(block, str):
            out += [block.rstrip("\n"), ""]
        else:
            out += [f"    {line}".rstrip() for line in block] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def replace_section(doc: str, title: str, body: str) -> str:
    """``doc`` with section ``## title`` replaced by ``body`` (appended when absent).

    A section runs from its heading to the next ``## `` heading; sections stay separated by
    one blank line.
    """
    heading = f"## {title}\n"
    lines = doc.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line == heading or line == heading.rstrip("\n")), None)
    if start is None:
        return doc.rstrip("\n") + "\n\n" + body
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    head = "".join(lines[:start])
    tail = "".join(lines[end:])
    return head + body + ("\n" + tail if tail else "")


def record(title: str, command: str, *blocks: Block, path: os.PathLike | str | None = None,
           when: str | None = None) -> None:
    """Write section ``## title`` of docs/benchmarks.md (or ``path``), keeping the others."""
    path = pathlib.Path(DOC if path is None else path)
    doc = path.read_text() if path.exists() else HEADER
    path.write_text(replace_section(doc, title, section_text(title, command, blocks, when)))
