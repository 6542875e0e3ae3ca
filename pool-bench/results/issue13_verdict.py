#!/usr/bin/env python3
"""Issue 13's verdict per cell from pool-bench's results.csv: pool/tokio's ratio (median of
per-repetition ratios) to the best *fair* peer of the same repetition (Jain >= 0.9, no
starved or stuck worker, no error), and the issue's target for the cell."""
import csv, sys, statistics
from collections import defaultdict

PEERS = {"bb8", "deadpool", "deadpool-unmanaged", "mobc", "qp", "fastpool", "r2d2"}
rows = list(csv.DictReader(open(sys.argv[1])))
reps = defaultdict(dict)  # (cycle, workers, size, rep) -> pool -> row
for r in rows:
    reps[(r["cycle"], int(r["workers"]), int(r["size"]), int(r["rep"]))][r["pool"]] = r

def fair(r):
    return (float(r["jain"]) >= 0.9 and int(r["starved"]) == 0 and int(r["stuck"]) == 0
            and int(r["errors"]) == 0)

cells = defaultdict(list)
for (cycle, w, s, rep), pools in reps.items():
    cells[(cycle, w, s)].append(pools)

order = {"touch": 0, "yield": 1}
print("| cycle | workers | size | best fair peer (most often) | pool/tokio vs best fair peer | vs qp | floor:arrayqueue+budget vs best fair peer | pool/tokio Jain (min) | floor+budget Jain (min) | target | met |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
misses = []
for key in sorted(cells, key=lambda k: (order[k[0]], k[1], k[2])):
    cycle, w, s = key
    ratios, qratios, fratios, bests, jains, fjains = [], [], [], [], [], []
    for pools in cells[key]:
        ours = pools["pool/tokio"]
        cand = [p for n, p in pools.items() if n in PEERS and fair(p)]
        best = max(cand, key=lambda p: float(p["cycles_per_sec"]))
        bests.append(best["pool"])
        ratios.append(float(ours["cycles_per_sec"]) / float(best["cycles_per_sec"]))
        qratios.append(float(ours["cycles_per_sec"]) / float(pools["qp"]["cycles_per_sec"]))
        jains.append(float(ours["jain"]))
        fl = pools.get("floor:arrayqueue+budget")
        if fl:
            fratios.append(float(fl["cycles_per_sec"]) / float(best["cycles_per_sec"]))
            fjains.append(float(fl["jain"]))
    ratio, qratio = statistics.median(ratios), statistics.median(qratios)
    best = max(set(bests), key=bests.count)
    jain = min(jains)
    if w == 1:
        target, value = ">= 0.8x qp", qratio
        met = qratio >= 0.8
    elif w > s and cycle == "touch" and s >= 4:
        target, value = ">= 1.5", ratio
        met = ratio >= 1.5
    elif w > s:
        target, value = ">= 1.0", ratio
        met = ratio >= 1.0
    else:
        target, met = "-", None
    fair_needed = fjains and min(fjains) >= 0.9
    fair_ok = (not fair_needed) or jain >= 0.9
    verdict = "-" if met is None else ("yes" if met else "**no**")
    if not fair_ok:
        verdict += " (Jain below 0.9)"
    if met is False or not fair_ok:
        misses.append(key)
    fr = f"{statistics.median(fratios):.2f}" if fratios else "-"
    fj = f"{min(fjains):.3f}" if fjains else "-"
    print(f"| {cycle} | {w} | {s} | {best} | {ratio:.2f} | {qratio:.2f} | {fr} | {jain:.3f} | "
          f"{fj} | {target} | {verdict} |")
print()
print(f"cells missing: {len(misses)} of {len(cells)}")
