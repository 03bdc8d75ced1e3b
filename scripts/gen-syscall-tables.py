#!/usr/bin/env python3
"""Regenerates worker/src/runtime/seccomp_tables.rs (syscall numbers by name)
from the kernel uapi headers of linux-libc-dev. Run from the repository root."""
import re

HEADERS = [
    ("X86_64", "x86_64 (`AUDIT_ARCH_X86_64`).", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    ("X86", "i386, the 32-bit syscalls of an x86_64 kernel (`AUDIT_ARCH_I386`).",
     "/usr/include/x86_64-linux-gnu/asm/unistd_32.h"),
]


def table(path):
    out = []
    for line in open(path):
        m = re.match(r"#define __NR_(\w+)\s+(\d+)\s*$", line)
        if m:
            out.append((m.group(1), int(m.group(2))))
    return sorted(out)


with open("worker/src/runtime/seccomp_tables.rs", "w") as f:
    f.write("//! Syscall numbers by name, for the architectures a seccomp profile is\n")
    f.write("//! compiled for. Generated from the kernel's uapi headers (linux-libc-dev)\n")
    f.write("//! by `scripts/gen-syscall-tables.py`; sorted by name for binary search.\n")
    for name, doc, path in HEADERS:
        f.write(f"\n/// {doc}\npub const {name}: &[(&str, i64)] = &[\n")
        for n, v in table(path):
            f.write(f'    ("{n}", {v}),\n')
        f.write("];\n")
