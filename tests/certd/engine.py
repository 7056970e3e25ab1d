"""A shared library that says who loaded it: what `ssl_certificate_key engine:<path>:<key>`
makes OpenSSL load while nginx tests a configuration. Its constructor writes, into a file of a
world-writable folder, the uid it runs as, whether it could open a secret file, and whether it
could create a file beside it (in llmp's data folder)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *report = fopen(REPORT, "w");
    if (!report) return;
    int secret = open(SECRET, O_RDONLY);
    int probe = open(PROBE, O_WRONLY | O_CREAT | O_EXCL, 0600);
    fprintf(report, "uid=%d secret=%s write=%s\n", (int)getuid(),
            secret >= 0 ? "read" : "refused", probe >= 0 ? "done" : "refused");
    fclose(report);
}
"""


@dataclass(frozen=True)
class Engine:
    library: Path
    report: Path

    def loaded_by(self) -> str | None:
        """`uid=<n> secret=read|refused write=done|refused` once the library was loaded, None
        before."""
        return self.report.read_text().strip() if self.report.exists() else None


def build_engine(folder: Path, secret: Path) -> Engine:
    """Compile the library into `folder` (made world-readable and writable)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)
    source, library, report = folder / "engine.c", folder / "engine.so", folder / "report"
    source.write_text(SOURCE)
    compiler = shutil.which("cc") or "gcc"
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            f'-DREPORT="{report}"',
            f'-DSECRET="{secret}"',
            f'-DPROBE="{secret.parent / "written-by-the-engine"}"',
            "-o",
            str(library),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    library.chmod(0o755)
    return Engine(library, report)
