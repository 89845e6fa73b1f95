#!/usr/bin/env python3
"""Two `pipe` binaries side by side, alternating, on the benchmarks' pipelines:
the 1,000-step overhead DAG (`benches/overhead.rs`), a 200-step pipeline run
with the cache off, its rerun with every step a cache hit (`benches/cache.rs`),
and a run where every step misses and stores into a cache that already holds
2,000 entries.
Prints medians and the ratio after/before: what a change costs.

    python3 engine/benches/compare-binaries.py BEFORE AFTER [RUNS]
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def overhead_pipeline():
    lines = ['pipeline "bench" {']
    for s in range(50):
        needs = ([s - 1] if s >= 1 else []) + ([s - 3] if s >= 3 and s % 3 == 0 else [])
        lines.append(f'    stage "s{s}" {{')
        if needs:
            lines.append("        needs " + " ".join(f'"s{n}"' for n in needs))
        lines += [f'        step "t{w}" {{ run "true" }}' for w in range(20)]
        lines.append("    }")
    return "\n".join(lines + ["}"]) + "\n"


def cache_pipeline():
    lines = ['pipeline "cached" {']
    for s in range(10):
        lines.append(f'    stage "s{s}" {{')
        if s:
            lines.append(f'        needs "s{s - 1}"')
        for w in range(20):
            lines.append(
                f'        step "t{w}" {{ run "mkdir -p out/s{s} && echo {w} > out/s{s}/t{w}"; '
                f'cache {{ inputs "src/**"; outputs "out/s{s}/t{w}" }} }}'
            )
        lines.append("    }")
    return "\n".join(lines + ["}"]) + "\n"


def timed(cmd, cwd):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "CI": "1", "NO_COLOR": "1"})
    return time.perf_counter() - start


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binaries = {"before": os.path.abspath(sys.argv[1]), "after": os.path.abspath(sys.argv[2])}
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    work = tempfile.mkdtemp(prefix="pipe-compare-")
    try:
        dirs = {}
        for name in binaries:
            d = os.path.join(work, name)
            os.makedirs(os.path.join(d, "overhead"))
            os.makedirs(os.path.join(d, "cache", "src", "mod"))
            with open(os.path.join(d, "overhead", "pipe.kdl"), "w") as f:
                f.write(overhead_pipeline())
            with open(os.path.join(d, "cache", "pipe.kdl"), "w") as f:
                f.write(cache_pipeline())
            for i in range(20):
                with open(os.path.join(d, "cache", "src", "mod", f"f{i}.txt"), "w") as f:
                    f.write("x" * 4096)
            dirs[name] = d
        times = {(b, m): [] for b in binaries for m in ("overhead", "no-cache", "all-hits", "stores")}

        def new_inputs(d, n):
            with open(os.path.join(d, "cache", "src", "mod", "f0.txt"), "w") as f:
                f.write(f"{n:08}" + "x" * 4088)

        for name, pipe in binaries.items():  # 2,000 entries, then the caches hold the current inputs
            for n in range(10):
                new_inputs(dirs[name], n)
                timed([pipe, "run", "--jobs", "2"], os.path.join(dirs[name], "cache"))
        for _ in range(runs):
            for name, pipe in binaries.items():
                d = dirs[name]
                times[(name, "overhead")].append(timed([pipe, "run", "--jobs", "2"], os.path.join(d, "overhead")))
                shutil.rmtree(os.path.join(d, "overhead", ".pipe"), ignore_errors=True)
                times[(name, "no-cache")].append(
                    timed([pipe, "run", "--jobs", "2", "--no-cache"], os.path.join(d, "cache")))
                times[(name, "all-hits")].append(timed([pipe, "run", "--jobs", "2"], os.path.join(d, "cache")))
                new_inputs(d, 100 + len(times[(name, "stores")]))
                times[(name, "stores")].append(timed([pipe, "run", "--jobs", "2"], os.path.join(d, "cache")))
        print(f"medians of {runs}, alternating; ms")
        print(f"{'':34} {'before':>9} {'after':>9} {'after/before':>13}")
        for what, label in [("overhead", "1,000 `true` steps, 2 at a time"),
                            ("no-cache", "200 steps, --no-cache"),
                            ("all-hits", "200 steps, every one a cache hit"),
                            ("stores", "200 misses stored, 2,000+ held")]:
            b = statistics.median(times[("before", what)]) * 1000
            a = statistics.median(times[("after", what)]) * 1000
            print(f"{label:34} {b:9.1f} {a:9.1f} {a / b:13.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
