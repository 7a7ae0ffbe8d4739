"""What ptxas gives each CUDA kernel, without a GPU: registers, stack, spills, and what follows.

NVRTC (CuPy's binding and the NVRTC wheel; no driver needed) compiles ``kernels/*.cu`` to a
cubin for one architecture with the options the runtime uses plus ``--ptxas-options=-v``; the
table gives per kernel the registers per thread, the stack frame (local memory) per thread, spill
stores/loads, the warps an SM can keep resident by registers alone (and in whole blocks of the
size the launcher uses), and the local memory the driver reserves for every resident thread at
launch (stack × threads per SM × SMs).

Run: ``python benches/kernel_resources.py [--arch sm_90] [--sms 132]``.
"""

from __future__ import annotations

import argparse
import re

from radint.gpu import _preload_nvrtc, cupy_nvrtc_options, kernel_source

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
PROPERTIES = re.compile(r"Function properties for (\w+)")
STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")
#: Per SM on sm_80 / sm_90: 64 Ki 32-bit registers, allocated per warp in units of 256; at most
#: 64 resident warps (2 048 threads).
REGISTERS_PER_SM, REGISTER_UNIT, MAX_WARPS = 65536, 256, 64


def ptxas_report(module: str, arch: str) -> dict[str, dict[str, int]]:
    """Per kernel of ``kernels/<module>.cu``: regs, stack, spill_stores, spill_loads."""
    _preload_nvrtc()
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(kernel_source(module), f"{module}.cu", [], [])
    try:
        # CuPy's own options (its -ftz=true changes some kernels' registers by up to 9).
        options = [f"-arch={arch}", *cupy_nvrtc_options(), "--ptxas-options=-v"]
        nvrtc.compileProgram(prog, options)
        log = nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)
    log = log.decode() if isinstance(log, bytes) else log
    out: dict[str, dict[str, int]] = {}
    current = None  # the kernel the next lines describe (device functions get their own)
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = out.setdefault(m.group(1), {})
        elif m := PROPERTIES.search(line):
            current = out.get(m.group(1))
        elif current is not None and (m := STACK.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                           spill_loads=int(m.group(3)))  # fmt: skip
        elif current is not None and (m := REGS.search(line)):
            current["regs"] = int(m.group(1))
    return out


def resident_warps(regs: int, block_warps: int = 1) -> int:
    """Warps an SM keeps resident when registers are the only limit, in whole blocks of
    ``block_warps`` warps."""
    per_warp = -(-regs * 32 // REGISTER_UNIT) * REGISTER_UNIT
    warps = min(MAX_WARPS, REGISTERS_PER_SM // max(per_warp, 1))
    return warps // block_warps * block_warps


def launch_warps(name: str) -> int | None:
    """Warps per block the launcher gives a kernel (None: it varies, as the fitter's)."""
    from radint.gpu import CSR_BLOCK, LANES_BLOCK

    if name.startswith("rf_"):
        return None
    return (LANES_BLOCK if name.startswith("ri_csr_lanes") else CSR_BLOCK) // 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90", help="cubin architecture (H100: sm_90)")
    parser.add_argument("--sms", type=int, default=132, help="SMs of the card (H100 SXM: 132)")
    args = parser.parse_args()
    print(f"ptxas for {args.arch}; reservation for {args.sms} SMs x 2048 threads")
    print(f"{'kernel':24} {'regs':>5} {'stack B':>8} {'spills st/ld':>13} "
          f"{'warps/SM':>9} {'in blocks':>10} {'reserved GiB':>13}")  # fmt: skip
    for module in ("integrate", "fit"):
        for name, r in sorted(ptxas_report(module, args.arch).items()):
            reserved = r["stack"] * 2048 * args.sms / 2**30
            block = launch_warps(name)
            in_blocks = "-" if block is None else str(resident_warps(r["regs"], block))
            print(f"{name:24} {r['regs']:5} {r['stack']:8} "
                  f"{r['spill_stores']:6}/{r['spill_loads']:<6} {resident_warps(r['regs']):9} "
                  f"{in_blocks:>10} {reserved:13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
