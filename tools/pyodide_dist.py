"""Assemble dist/pyodide/: the Pyodide npm distribution plus our wheels and a lock file.

``loadPyodide({indexURL: "dist/pyodide/"})`` then ``loadPackage("ping_web")`` (or any name
listed) works offline. The npm package's own lock file points at a CDN this project cannot
reach, so the lock written here lists exactly the wheels that are present.
(``pyodide-lock`` needs Python 3.12+; this is the small part of it we need.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

RUNTIME_FILES = [
    "pyodide.asm.mjs",
    "pyodide.asm.wasm",
    "pyodide.mjs",
    "pyodide.js",
    "pyodide.d.ts",
    "ffi.d.ts",
    "python_stdlib.zip",
    "package.json",
]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_entry(path: Path, shipped: set[str]) -> dict:
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        metadata = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
    top_level = {n.split("/")[0] for n in names if "/" in n} | {n for n in names if "/" not in n and n.endswith(".py")}
    imports = sorted(n.removesuffix(".py") for n in top_level if not n.endswith((".dist-info", ".data")))
    depends = []
    for requirement in metadata.get_all("Requires-Dist") or []:
        if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
            continue
        dep = normalize(re.split(r"[ ;<>=!~\[(]", requirement.strip(), maxsplit=1)[0])
        if dep in shipped and dep not in depends:
            depends.append(dep)
    name = metadata["Name"]
    return {
        "name": name,
        "version": metadata["Version"],
        "file_name": path.name,
        "install_dir": "site",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "package_type": "package",
        "imports": imports,
        "depends": depends,
        "unvendored_tests": False,
        "shared_library": False,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyodide", type=Path, required=True, help="the npm pyodide package folder")
    parser.add_argument("--out", type=Path, required=True, help="dist/pyodide")
    parser.add_argument("wheels", type=Path, nargs="+")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*.whl"):
        stale.unlink()
    for name in RUNTIME_FILES:
        source = args.pyodide / name
        if source.exists():
            shutil.copy2(source, args.out / name)
    upstream = json.loads((args.pyodide / "pyodide-lock.json").read_text())

    shipped = {normalize(w.name.split("-")[0]) for w in args.wheels}
    packages = {}
    for wheel in args.wheels:
        shutil.copy2(wheel, args.out / wheel.name)
        entry = wheel_entry(wheel, shipped)
        packages[normalize(entry["name"])] = entry
    lock = {"info": upstream["info"], "packages": dict(sorted(packages.items()))}
    (args.out / "pyodide-lock.json").write_text(json.dumps(lock, indent=1) + "\n")
    print(
        f"dist/pyodide: Pyodide {upstream['info']['python']} runtime + {len(packages)} wheels: "
        + ", ".join(sorted(packages))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
