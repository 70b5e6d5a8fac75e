"""Static report of the CUDA engine's compiled kernels, read from the built ``_cuda`` module.

For each architecture in the module (SASS for sm_80 and sm_90) and each NTK and environment
kernel it prints the registers, the spill traffic and the static shared memory (``cuobjdump
-res-usage``), and the size of the kernel's inner loop, the loop that stages and multiplies one
16-deep chunk: its tensor-core (DMMA/HMMA) and FMA instructions, its global and shared loads and
stores, its register moves, and the instructions on the longest path through one chunk (for
the NTK kernels, the steady-state chunk: the shortest path through its product and its async
copies, which skips the rare paths their loop also holds: a new Gram, the fold, per-site
writes).  That path is an upper bound of the issue slots a warp spends per chunk besides
waiting, to be read against the chunk's tensor-core time.  No GPU is needed and nothing is
timed: timings come from ``bench_ntk.py --device gpu``.

    pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm   # if the CUDA toolkit lacks them
    python bench/sass_report.py            # the installed mpsntk._cuda
    python bench/sass_report.py --module build/_cuda.cpython-311-x86_64-linux-gnu.so --json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

KERNELS = ("ntk_kernel", "gemm_kernel", "gemm_batch_kernel")
SIMT_FMAS = 64  # a loop with this many FMAs is a SIMT product loop

_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def _cuobjdump():
    """The cuobjdump executable (its -sass needs nvdisasm beside it or on PATH): on PATH, or from
    the nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels."""
    found = shutil.which("cuobjdump")
    if found and shutil.which("nvdisasm"):
        return found
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for exe in Path(root).glob("*/bin/cuobjdump"):
            if (exe.parent / "nvdisasm").exists():
                os.environ["PATH"] = f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"
                return str(exe)
    raise SystemExit("sass_report: cuobjdump and nvdisasm not found; "
                     "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")


def _run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def demangle(names):
    """Readable kernel names (c++filt when present), without the engine's namespaces."""
    out = list(names)
    if shutil.which("c++filt"):
        out = _run("c++filt", *names).splitlines() if names else []
    out = [re.sub(r"mpsntk::(cuda::)?(\(anonymous namespace\)::)?|tile::", "", n) for n in out]
    return [re.sub(r"^void |\(.*\)$", "", n).replace(" >", ">") for n in out]


def functions(sass):
    """{mangled name: [(address, instruction)]} of one architecture's SASS listing."""
    funcs = {}
    for part in re.split(r"\n\s+Function : ", sass)[1:]:
        name, body = part.split("\n", 1)
        found = (_INSTR.match(line) for line in body.split("\n"))
        funcs[name.strip()] = [(int(m.group(1), 16), m.group(2)) for m in found if m]
    return funcs


def resources(text):
    """{mangled name: {"registers", "stack", "shared", "local"}} from ``cuobjdump -res-usage``."""
    res, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            fields = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            res[name] = {key: fields.get(field, 0) for key, field in
                         (("registers", "REG"), ("stack", "STACK"), ("shared", "SHARED"),
                          ("local", "LOCAL"))}
            name = None
    return res


def _op(instr):
    """Opcode without predicate and modifiers: '@!P0 LDG.E.64 R2, ...' -> 'LDG'."""
    return re.sub(r"^@!?U?P\w+\s+", "", instr).split(" ")[0].split(".")[0]


def _is_move(text):
    return _op(text) == "MOV" or "IMAD.MOV" in text


def chunk_loop(instrs, steady=False):
    """Statistics of the innermost loop around the tensor-core product (or, in a SIMT kernel,
    around at least SIMT_FMAS FMAs); None when the kernel has no such loop.  "path" (and
    "path_moves") is the longest path through the loop, or, if steady, the steady-state chunk:
    the shortest path through every block that holds product instructions or async copies
    (the NTK kernel's loop also holds the rare paths: a new Gram, the fold, per-site writes)."""
    ops = [(a, _op(t), t) for a, t in instrs]
    fmas = [a for a, o, _ in ops if o in ("DFMA", "FFMA")]
    tensor = [a for a, o, _ in ops if o in ("DMMA", "HMMA")]
    loops = []
    for a, _, t in ops:
        m = _BRANCH.search(t)
        if m and int(m.group(1), 16) < a:
            loops.append((int(m.group(1), 16), a))

    def holds_product(head, end):
        if tensor:
            return any(head <= a <= end for a in tensor)
        return sum(head <= a <= end for a in fmas) >= SIMT_FMAS

    loops = [lp for lp in loops if holds_product(*lp)]
    if not loops:
        return None
    head, end = min(loops, key=lambda lp: lp[1] - lp[0])
    body = [(a, o, t) for a, o, t in ops if head <= a <= end]
    count = Counter(o for _, o, _ in body)
    path = _path(body, head, end, steady, bool(tensor))
    return {
        "loop": len(body),
        "path": len(path),
        "tensor": count["DMMA"] + count["HMMA"],
        "fma": count["DFMA"] + count["FFMA"],
        "ldg": count["LDG"] + count["LD"],
        "lds": count["LDS"],
        "sts": count["STS"],
        "ldgsts": count["LDGSTS"],
        "moves": sum(1 for _, _, t in body if _is_move(t)),
        "path_moves": sum(1 for _, _, t in path if _is_move(t)),
        "local": count["LDL"] + count["STL"],
    }


def _path(body, head, end, steady, tensor):
    """The instructions of one head -> back-edge path through forward branches: the longest, or
    if steady the shortest through every required block (product or async-copy instructions;
    on a SIMT path, blocks of many FMAs)."""
    leaders = {head}
    for i, (_, o, t) in enumerate(body):
        m = _BRANCH.search(t)
        if m or o == "EXIT":
            if i + 1 < len(body):
                leaders.add(body[i + 1][0])
            if m and head <= int(m.group(1), 16) <= end:
                leaders.add(int(m.group(1), 16))
    starts = sorted(leaders)
    blocks = {s: [(a, o, t) for a, o, t in body if s <= a < nxt]
              for s, nxt in zip(starts, starts[1:] + [end + 1])}

    def required(block):
        ops = Counter(o for _, o, _ in block)
        if ops["DMMA"] or ops["HMMA"] or ops["LDGSTS"] >= 4:  # a chunk's copies
            return True
        return not tensor and ops["DFMA"] + ops["FFMA"] >= SIMT_FMAS // 2  # (an exp has a few)

    needed = [s for s in starts if steady and required(blocks[s])]

    @functools.cache
    def best(start):
        block = blocks[start]
        a, o, last = block[-1]
        follow = starts.index(start) + 1
        successors = []
        m = _BRANCH.search(last)
        if m:
            target = int(m.group(1), 16)
            if target == head and a == end:
                return tuple(block)  # the back edge
            if target in blocks and target > start:
                successors.append(target)
            if last.startswith("@") and follow < len(starts):
                successors.append(starts[follow])
        elif o != "EXIT" and follow < len(starts):
            successors.append(starts[follow])
        # a path that jumps past a required block can no longer pass through it
        nxt = next((s for s in needed if s > start), None)
        tails = [t for t in (best(s) for s in successors if nxt is None or s <= nxt) if t]
        if not tails:
            return None
        return tuple(block) + (min if steady else max)(tails, key=len)

    return list(best(head) or ())


def report(module, archs):
    tool = _cuobjdump()
    rows = []
    for arch in archs:
        usage = resources(_run(tool, "-res-usage", "-arch", arch, str(module)))
        funcs = functions(_run(tool, "-sass", "-arch", arch, str(module)))
        names = [n for n in funcs if any(k in n for k in KERNELS)]
        for name, readable in zip(names, demangle(names)):
            ops = {_op(t) for _, t in funcs[name]}
            if "BPT" in ops and not ops & {"DMMA", "HMMA"}:
                continue  # compiled as a trap: an instruction this architecture lacks
            loop = chunk_loop(funcs[name], steady="ntk_kernel" in name)
            res = usage.get(name, {})
            rows.append({"arch": arch, "kernel": readable, **res, **(loop or {})})
    return rows


def _markdown(rows):
    head = ("| arch | kernel | regs | stack B (spills) | shared B | chunk loop | chunk path "
            "| DMMA/HMMA | FMA | LDG | LDGSTS | LDS | STS | moves (path) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        keys = ("registers", "stack", "shared", "loop", "path", "tensor", "fma", "ldg", "ldgsts",
                "lds", "sts")
        cells = [r["arch"], r["kernel"], *(r.get(k) for k in keys)]
        cells.append(f"{r['moves']} ({r['path_moves']})" if "moves" in r else None)
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", help="the built _cuda module (default: the installed mpsntk._cuda)")
    ap.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"])
    ap.add_argument("--json", action="store_true", help="one JSON line per kernel, no table")
    args = ap.parse_args(argv)
    module = args.module
    if module is None:
        spec = importlib.util.find_spec("mpsntk._cuda")
        if spec is None or not spec.origin:
            raise SystemExit("sass_report: no mpsntk._cuda (built without a CUDA compiler?)")
        module = spec.origin
    rows = report(Path(module), args.arch)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
