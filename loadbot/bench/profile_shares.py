#!/usr/bin/env python3
"""profile_shares.py PERF_DATA [LEAVES]: shares of a shard's perf samples.

Prints the user-space share of all samples, then the user-space samples by
component: each sample goes to the first component (in the order below)
any frame of its stack matches. LEAVES > 0 also lists that many hottest
leaf functions per component."""
import collections
import re
import subprocess
import sys

COMPONENTS = [
    ("persister and store", r"persister|store::"),
    ("tick: socket writes (push_state)", r"push_state|push_reliable|write_now"),
    ("tick: view diff", r"ViewDiff::compute"),
    ("tick: frames (layout, lookup)", r"write_diff|frames::|TickFrames|assemble::"),
    ("tick: grid query", r"query_cached|grid::"),
    ("tick: inputs (simulate)", r"simulate|drain_into"),
    ("tick: rest of publish_views", r"publish_views"),
    ("tick: rest of on_tick", r"on_tick"),
    ("read: on_move", r"on_move"),
    ("read: decode", r"decode_client|rmp_serde"),
    ("read: on_frame", r"on_frame|on_item"),
    ("read: WebSocket (tungstenite)", r"WebSocketStream|tungstenite"),
    ("read: actix stream", r"ActorStream"),
    ("actix mailbox", r"next_message|AddressReceiver"),
    ("actix context", r"ContextFut"),
    ("tokio scheduler and timers", r"tokio::runtime"),
]


def main():
    data, leaves = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    total = user = 0
    by = collections.Counter()
    leaf = collections.defaultdict(collections.Counter)
    for sample in out.split("\n\n"):
        frames = [line.strip() for line in sample.strip().splitlines()]
        if not frames:
            continue
        total += 1
        if frames[0].split()[0].startswith("ffffffff"):
            continue
        user += 1
        name = next((n for n, rx in COMPONENTS if any(re.search(rx, f) for f in frames)), "other")
        by[name] += 1
        leaf[name][" ".join(frames[0].split()[1:])[:100]] += 1
    print(f"samples {total}, user space {100 * user / max(total, 1):.1f} %")
    print("user-space samples by component:")
    for name, n in by.most_common():
        print(f"  {100 * n / max(user, 1):5.1f} %  {name}")
        for sym, m in leaf[name].most_common(leaves):
            print(f"           {100 * m / max(user, 1):5.2f} %  {sym}")


if __name__ == "__main__":
    main()
