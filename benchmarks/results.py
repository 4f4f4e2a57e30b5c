"""Write one benchmark's section of benchmarks/RESULTS.md (replacing its previous version), stamped
with the machine, the date and the command that produced it.
"""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_HEADER = "# Benchmark results\n\nEach section is rewritten by the command named in it.\n"


def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory_gb:.0f} GiB, {platform.system()}"


def write_section(title: str, lines: list[str], command: str) -> None:
    stamp = (
        f"Machine: {machine_description()}. Date: {datetime.now(UTC).date().isoformat()}. "
        f"Command: `{command}`."
    )
    body = "\n".join(
        [f"<!-- section: {title} -->", f"## {title}", "", stamp, "", *lines, "<!-- end section -->"]
    )
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    pattern = re.compile(rf"<!-- section: {re.escape(title)} -->.*?<!-- end section -->", re.DOTALL)
    text = (
        pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    )
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip() + "\n")
    tmp.replace(RESULTS)
