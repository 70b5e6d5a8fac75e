"""What a Linux wheel's shared objects need from the system, against a manylinux policy.

For each extension module of the wheel: the libraries it links that the policy does not allow
(``auditwheel repair`` bundles those), and every versioned symbol it takes from an allowed
library (glibc, libstdc++, libgcc_s) with a version newer than the policy allows, by name.  It
reads auditwheel's own policy table, so it agrees with ``auditwheel show``, and says *which*
symbols pin the tag: a wheel built outside a manylinux image binds the newest versions of the
build machine's glibc and libstdc++ (``exp@GLIBC_2.29``, ``pthread_*@GLIBC_2.34``, ...), which
the manylinux_2_28 image's older glibc and its gcc-toolset's libstdc++ (newer parts linked
statically) do not have.

    pip install auditwheel            # brings pyelftools and the policy table
    python tools/wheel_symbols.py dist/mpsntk-*.whl [--policy manylinux_2_28]

Exit status 1 when something exceeds the policy (0 otherwise).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import resources

from elftools.elf.elffile import ELFFile


def _version_key(version):
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def load_policy(name, arch="x86_64"):
    """(allowed libraries, {namespace: allowed versions}) of a manylinux policy."""
    table = json.loads((resources.files("auditwheel.policy") / "manylinux-policy.json").read_text())
    for entry in table:
        if name in [entry["name"], *entry.get("aliases", [])]:
            return set(entry["lib_whitelist"]), entry["symbol_versions"][arch]
    known = ", ".join(e["name"] for e in table)
    raise SystemExit(f"wheel_symbols: no policy {name!r} in auditwheel's table ({known})")


def needs(elf_bytes):
    """(DT_NEEDED libraries, [(library, version, symbol)] of undefined versioned symbols)."""
    elf = ELFFile(io.BytesIO(elf_bytes))
    dynamic = elf.get_section_by_name(".dynamic")
    needed = [t.needed for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
    verneed, versym = elf.get_section_by_name(".gnu.version_r"), elf.get_section_by_name(
        ".gnu.version")
    index = {}
    if verneed is not None:
        for entry, auxiliaries in verneed.iter_versions():
            for aux in auxiliaries:
                index[aux["vna_other"]] = (entry.name, aux.name)
    refs = []
    for i, sym in enumerate(elf.get_section_by_name(".dynsym").iter_symbols()):
        if sym["st_shndx"] != "SHN_UNDEF" or versym is None:
            continue
        ndx = versym.get_symbol(i)["ndx"]
        if isinstance(ndx, int) and (ndx & 0x7FFF) in index:
            refs.append((*index[ndx & 0x7FFF], sym.name))
    return needed, refs


def demangle(names):
    """C++ names made readable where c++filt is at hand."""
    if not names or not shutil.which("c++filt"):
        return list(names)
    return subprocess.run(["c++filt", *names], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def report(wheel, policy_name):
    """Print what the wheel's modules need beyond the policy; True when nothing does."""
    allowed_libs, allowed_versions = load_policy(policy_name)
    allowed_libs.add("ld-linux-x86-64.so.2")  # the dynamic loader: part of glibc, never bundled
    ok = True
    print(f"{wheel}\n  against {policy_name}:")
    with zipfile.ZipFile(wheel) as zf:
        inside = {n.rsplit("/", 1)[-1] for n in zf.namelist()}
        for name in sorted(n for n in zf.namelist() if ".so" in n.rsplit("/", 1)[-1]):
            needed, refs = needs(zf.read(name))
            external = [n for n in needed if n not in inside]
            bundled = [n for n in external if n not in allowed_libs]
            beyond = collections.defaultdict(set)
            newest = {}
            for lib, version, symbol in refs:
                if lib not in allowed_libs:
                    continue  # a library auditwheel bundles: its versions travel with it
                namespace, _, number = version.partition("_")
                if _version_key(number) > _version_key(newest.get(namespace, "0")):
                    newest[namespace] = number
                if number not in allowed_versions.get(namespace, []):
                    beyond[(lib, version)].add(symbol)
            top = {ns: max(v, key=_version_key) for ns, v in allowed_versions.items()}
            print(f"  {name}")
            print(f"    links: {', '.join(external)}")
            if bundled:
                print(f"    not in the policy (auditwheel bundles them): {', '.join(bundled)}")
            print("    newest versions needed (policy's newest): " + ", ".join(
                f"{ns} {v} ({top.get(ns, '-')})" for ns, v in sorted(newest.items())))
            for (lib, version), symbols in sorted(beyond.items(),
                                                  key=lambda kv: (kv[0][0], _version_key(
                                                      kv[0][1].partition("_")[2]))):
                ok = False
                names = ", ".join(demangle(sorted(symbols)))
                print(f"    beyond the policy: {version} ({lib}): {names}")
    if ok:
        print("  nothing beyond the policy")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="+")
    parser.add_argument("--policy", default="manylinux_2_28",
                        help="a manylinux policy name (default: %(default)s)")
    args = parser.parse_args(argv)
    results = [report(w, args.policy) for w in args.wheels]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
