// Add compiled bytecode to a pure wheel, for Pyodide: node tools/wheel_bytecode.mjs WHEEL
//
// Pyodide compiles every .py it imports, on every cold start: for ping_web that was about
// 150 ms of the time to open a client. This writes, next to each module, the
// __pycache__/<module>.cpython-<ver>.pyc that Pyodide's own Python makes (it is run inside
// node_modules/pyodide, so the bytecode matches the runtime the wheel is for), as
// unchecked hash-based pycs (PEP 552): the importer uses them without reading the source
// again, and the sources stay for tracebacks. RECORD is rewritten to list them. The wheel is
// replaced in place.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const wheel = process.argv[2];
if (!wheel) throw new Error("usage: node tools/wheel_bytecode.mjs WHEEL");

const { loadPyodide } = await import(join(ROOT, "node_modules/pyodide/pyodide.mjs"));
const pyodide = await loadPyodide();
pyodide.FS.writeFile("/tmp/in.whl", readFileSync(wheel));
const summary = pyodide.runPython(`
import base64, hashlib, importlib.util, io, sys, zipfile
from importlib._bootstrap_external import _code_to_hash_pyc

def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"

src = zipfile.ZipFile("/tmp/in.whl")
out = io.BytesIO()
added = 0
record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
lines = []
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if info.filename == record_name or "/__pycache__/" in info.filename:
            continue
        data = src.read(info)
        dst.writestr(info, data)
        lines.append(record_line(info.filename, data))
        if info.filename.endswith(".py"):
            code = compile(data, info.filename, "exec", dont_inherit=True)
            pyc = bytes(_code_to_hash_pyc(code, importlib.util.source_hash(data), checked=False))
            name = importlib.util.cache_from_source(info.filename)
            dst.writestr(zipfile.ZipInfo(name, date_time=info.date_time), pyc, zipfile.ZIP_DEFLATED)
            lines.append(record_line(name, pyc))
            added += 1
    lines.append(f"{record_name},,")
    dst.writestr(record_name, "\\n".join(lines) + "\\n")
with open("/tmp/out.whl", "wb") as f:
    f.write(out.getvalue())
f"{added} modules compiled for {sys.implementation.cache_tag}"
`);
writeFileSync(wheel, pyodide.FS.readFile("/tmp/out.whl"));
console.log(`${wheel}: ${summary}`);
