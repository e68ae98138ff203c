#!/usr/bin/env python3
"""Side by side with the floor, several builds alternated, several rounds.

    FLOOR_DIR=../shared/floor loadbot/bench/alternate.py ROUNDS R P SECONDS BUILD...

Each BUILD is a folder holding `target/release/tessera-server` and
`target/release/loadbot` (a build copied aside, so that later builds do not
replace it). Every round runs the floor's `sidebyside.py R P SECONDS` once
from each folder, in the order given (the order turns round by round, so no
build always runs first); each run measures the floor, then the shard, and
their ratio. The output is one line per run, then per build the median
ratio and its range: on a box whose speed drifts from minute to minute, the
median of alternated runs is what can be compared, not one run. `VIEW`
(the shard's view radius, e.g. 2000.0 for the whole map) and `NO_FLOOR`
pass through to `sidebyside.py`. Every run is bounded by its own timeout;
traffic goes to 127.0.0.1 only.
"""
import json
import os
import statistics
import subprocess
import sys


def usage():
    sys.exit(__doc__.strip())


def run(build, floor_dir, r, p, seconds):
    """One sidebyside.py run from `build`: (floor, shard) JSON rows."""
    script = os.path.join(floor_dir, "sidebyside.py")
    out = subprocess.run(
        [sys.executable, script, str(r), str(p), str(seconds)],
        cwd=build, capture_output=True, text=True, timeout=3 * seconds + 400,
    )
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith(("{", "null"))]
    if len(rows) != 2 or rows[1] is None:
        sys.stderr.write(f"{build}: no result\n{out.stderr[-2000:]}\n")
        return None, None
    return rows[0], rows[1]


def main():
    if len(sys.argv) < 6:
        usage()
    rounds, r, p, seconds = (int(a) for a in sys.argv[1:5])
    builds = [os.path.abspath(b) for b in sys.argv[5:]]
    floor_dir = os.path.abspath(os.environ.get("FLOOR_DIR", "../shared/floor"))
    for b in builds:
        if not os.access(os.path.join(b, "target/release/tessera-server"), os.X_OK):
            sys.exit(f"{b}: no target/release/tessera-server")
    if not os.path.exists(os.path.join(floor_dir, "sidebyside.py")):
        sys.exit(f"FLOOR_DIR={floor_dir}: no sidebyside.py")
    ratios = {b: [] for b in builds}
    for k in range(rounds):
        order = builds[k % len(builds):] + builds[:k % len(builds)]
        for b in order:
            floor, shard = run(b, floor_dir, r, p, seconds)
            if shard is None:
                continue
            line = (f"round {k + 1} {os.path.basename(b)}: shard {shard['server_cores']:.3f} cores, "
                    f"RTT p99 {shard['rtt_p99_ms']:.1f} ms, visible p99 {shard['visible_p99_ms']:.1f} ms")
            if floor:
                ratio = shard["server_cores"] / floor["server_cores"]
                ratios[b].append(ratio)
                line += f"; floor {floor['server_cores']:.3f} cores; ratio {ratio:.2f}"
            print(line, flush=True)
    print(f"\n{r}x{p}, VIEW={os.environ.get('VIEW', '400.0')}, {rounds} rounds:")
    for b, rs in ratios.items():
        if rs:
            print(f"  {os.path.basename(b)}: median ratio {statistics.median(rs):.2f} "
                  f"(range {min(rs):.2f}-{max(rs):.2f}, {len(rs)} runs)")


if __name__ == "__main__":
    main()
