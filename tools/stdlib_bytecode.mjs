// Add bytecode to the standard library a Pyodide dist ships, for the modules a client uses:
//   node tools/stdlib_bytecode.mjs DIST_PYODIDE_DIR
//
// The npm Pyodide's python_stdlib.zip holds sources only, so every start compiles each
// standard module it imports again: about 1.4 s of Pyodide's own boot, ~90 ms of the first
// loadPackage (which imports zipfile, shutil, tarfile, ...) and what ping_web imports. This
// boots the dist's Pyodide, loads ping_web and opens a client the way a page does, and adds,
// beside the source of every standard module that imported (so tracebacks keep their
// lines), an unchecked hash-based .pyc (PEP 552) compiled by that same Python. The other
// modules stay sources only, so the zip grows by the modules used, not all of them.
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

const dist = resolve(process.argv[2] ?? "");
if (!process.argv[2]) throw new Error("usage: node tools/stdlib_bytecode.mjs DIST_PYODIDE_DIR");
const zipPath = join(dist, "python_stdlib.zip");

const { loadPyodide } = await import(join(dist, "pyodide.mjs"));
const pyodide = await loadPyodide({ indexURL: dist + "/" });
await pyodide.loadPackage(["ping_web"], { messageCallback: () => {} });
await pyodide.runPythonAsync(`
import ping_web.client, ping_web.storage, ping_web.delivery
from ping_web.client import MessagingClient
from ping_web.storage import MemoryStorage
alice = await MessagingClient.open(MemoryStorage(), b"alice")
bob = await MessagingClient.open(MemoryStorage(), b"bob")
cid = (await alice.create_conversation("x")).id
added = await alice.add_members(cid, [(bob.device_id, await bob.new_key_package())])
await alice.confirm_commit(cid)
await bob.join(added.welcome.encode())
await bob.receive((await alice.send(cid, b"hi")).encode())
`);
pyodide.FS.writeFile("/tmp/stdlib.zip", readFileSync(zipPath));
const summary = pyodide.runPython(`
import importlib.util, io, sys, zipfile
from importlib._bootstrap_external import _code_to_hash_pyc

# Standard modules in use now: their sources in the zip.
used = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if "python314.zip/" in path and path.endswith(".py"):
        used.add(path.split("python314.zip/", 1)[1])
src = zipfile.ZipFile("/tmp/stdlib.zip")
names = set(src.namelist())
out = io.BytesIO()
added = 0
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if info.filename.endswith(".pyc"):
            continue  # made again below, from this run's list
        data = src.read(info)
        dst.writestr(info, data)
        if info.filename in used:
            code = compile(data, info.filename, "exec", dont_inherit=True)
            pyc = bytes(_code_to_hash_pyc(code, importlib.util.source_hash(data), checked=False))
            dst.writestr(zipfile.ZipInfo(info.filename + "c", date_time=info.date_time), pyc, zipfile.ZIP_DEFLATED)
            added += 1
with open("/tmp/stdlib.out.zip", "wb") as f:
    f.write(out.getvalue())
f"{added} of {sum(n.endswith('.py') for n in names)} standard modules compiled"
`);
writeFileSync(zipPath, pyodide.FS.readFile("/tmp/stdlib.out.zip"));
console.log(`${zipPath}: ${summary}`);
