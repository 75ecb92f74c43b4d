"""``bench_convex.py``'s figures: what each problem's runs come to, and the printed tables.
Not run directly.

Times are medians over the timed runs of a tool's winning setting; mpi_dml's
per-iteration figures are means over every iteration of those runs (its own timers in
``metrics.jsonl``: compute_s, comm_s and epoch_s, each the slowest rank's).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import convex_problems as cp  # noqa: E402

# A real interconnect for comparison: ~2 us a message, 10 GB/s a link.
INTERCONNECT = {"alpha_s": 2e-6, "beta_s_per_byte": 1 / 10e9}


def versions(names) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _median(runs, key):
    return common.median([r[key] for r in runs]) if runs and key in runs[0] else None


def per_iteration(runs) -> dict:
    """Means over every iteration of ``runs`` of mpi_dml's own timers (means, not
    medians, so that compute + Allreduce + the rest add up to the iteration)."""
    its = [it for r in runs for it in r["per_iteration"]]
    out = {key: float(np.mean([it.get(key) or 0.0 for it in its]))
           for key in ("compute_s", "comm_s", "epoch_s")}
    out["evaluations"] = float(np.mean([it.get("evaluations") or 1 for it in its]))
    return out


def summarize(prob: dict, ref: dict, refs: dict, sweeps: dict, timed: dict) -> dict:
    tools = {}
    for tool, measured in sweeps.items():
        sweep = [{k: r.get(k) for k in ("setting", "train_s", "iterations", "gap", "own_gap",
                                        "within")} for r in measured["runs"]]
        entry = {"reached": tool in timed, "sweep": sweep, "stopped": measured.get("stopped"),
                 "own_floor": refs["own"].get(tool, {}).get("floor")}
        if tool in timed:
            rs = timed[tool]
            entry.update(setting=rs[0]["setting"], iterations=rs[0]["iterations"],
                         gap=max(r["gap"] for r in rs), own_gap=rs[0].get("own_gap"),
                         **{k: _median(rs, k) for k in ("train_s", "load_s", "wall_s")},
                         times=[r["train_s"] for r in rs])
            if tool.startswith("mpi_dml"):
                entry["per_iteration"] = per_iteration(rs)
                entry["evaluations"] = rs[0]["evaluations"]
        else:
            entry["best_gap"] = min(r["gap"] for r in measured["runs"])
        tools[tool] = entry
    return {"rows": prob["n"], "features": prob["features"], "wd": prob["wd"],
            "file_mb": prob["bytes"] / 1e6, "best": refs["best"],
            "reference": {k: ref[k] for k in ("objective", "iterations", "grad_max", "gap_bound",
                                              "seconds")},
            "tools": tools}


def jsonable(value):
    """``value`` for json.dumps: NumPy scalars as numbers, no weight vectors."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if k not in ("weights",)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _s(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def tools_table(name: str, p: dict) -> str:
    peers = [t["train_s"] for k, t in p["tools"].items()
             if not k.startswith("mpi_dml") and t["reached"]]
    fastest = min(peers) if peers else None
    rows = []
    for tool, t in p["tools"].items():
        if not t["reached"]:
            tried = t["sweep"][-1]["setting"]
            rows.append([tool, f"not reached (tol down to {tried:g}; best gap "
                               f"{t['best_gap']:.1e}{'; ' + t['stopped'] if t['stopped'] else ''})",
                         "", "", "", "", "", "", ""])
            continue
        own = "-" if t.get("own_gap") is None else f"{t['own_gap']:.1e}"
        speed = f"{fastest / t['train_s']:.2f}x" if fastest else "-"
        rows.append([tool, f"{t['setting']:g}", t["iterations"], _s(t["load_s"]),
                     _s(t["train_s"], 3), _s(t.get("wall_s")), f"{t['gap']:.1e}", own, speed])
    return common.table(["tool", "tol", "iters", "load s", "train s", "wall s", "gap to F*",
                         "own gap", "vs fastest peer"], rows)


def where_table(results: dict) -> str:
    rows = []
    for name, p in results["problems"].items():
        for tool, t in p["tools"].items():
            if not (tool.startswith("mpi_dml") and t["reached"]):
                continue
            it = t["per_iteration"]
            other = it["epoch_s"] - it["compute_s"] - it["comm_s"]
            rows.append([name, tool.split("x")[-1], t["iterations"], f"{it['evaluations']:.2f}",
                         f"{it['compute_s'] * 1e3:.2f}", f"{it['comm_s'] * 1e3:.3f}",
                         f"{other * 1e3:.2f}", f"{it['epoch_s'] * 1e3:.2f}"])
    return common.table(["problem", "ranks", "iters", "evals/iter", "compute ms", "allreduce ms",
                         "other ms", "iteration ms"], rows)


def model_for(p: dict, allreduce: dict) -> tuple[dict, list] | None:
    """Fit compute per row on the 1- and 2-rank runs (or what there is) and model P ranks."""
    points = [(int(tool.split("x")[-1]), t) for tool, t in p["tools"].items()
              if tool.startswith("mpi_dml") and t["reached"]]
    if not points:
        return None
    n = p["rows"]
    shares = [-(-n // rank) for rank, _ in points]
    per_eval = [t["per_iteration"]["compute_s"] / t["per_iteration"]["evaluations"]
                for _, t in points]
    fixed, per_row = cp.fit_compute(shares, per_eval)
    evals = max(points)[1]["per_iteration"]["evaluations"]
    nbytes = (p["features"] + 3) * 8  # loss sum, correct count, gradient (weights, bias)
    here = cp.model_rows(n, nbytes, fixed, per_row, evals, allreduce["alpha_s"],
                         allreduce["beta_s_per_byte"])
    fast = cp.model_rows(n, nbytes, fixed, per_row, evals, **{
        "alpha": INTERCONNECT["alpha_s"], "beta": INTERCONNECT["beta_s_per_byte"]})
    fit = {"fixed_s": fixed, "per_row_s": per_row, "evaluations": evals, "bytes": nbytes,
           "from_ranks": [rank for rank, _ in points]}
    return fit, [dict(h, interconnect_s=f["strong_s"], interconnect_speedup=f["speedup"],
                      interconnect_allreduce_s=f["allreduce_s"]) for h, f in zip(here, fast)]


def model_table(rows: list) -> str:
    out = [[r["p"], r["rows_per_rank"], f"{r['compute_s'] * 1e3:.3f}",
            f"{r['allreduce_s'] * 1e3:.3f}", f"{r['strong_s'] * 1e3:.3f}",
            f"{r['speedup']:.1f}", f"{r['weak_s'] * 1e3:.3f}",
            f"{r['interconnect_allreduce_s'] * 1e3:.3f}", f"{r['interconnect_s'] * 1e3:.3f}",
            f"{r['interconnect_speedup']:.1f}"] for r in rows]
    return common.table(["P", "rows/rank", "compute ms", "allreduce ms", "iteration ms",
                         "speedup", "weak ms", "net allreduce ms", "net iteration ms",
                         "net speedup"], out)


def report(results: dict, target: float, own_floor: float) -> str:
    lines = []
    for name, p in results["problems"].items():
        lines += ["", f"{name}: {p['rows']} x {p['features']}, wd {p['wd']:.3g}, "
                      f"F* = {p['best']:.12g} (relative gaps to it; within {cp.WITHIN:g})",
                  tools_table(name, p)]
        for tool, t in p["tools"].items():
            if t["own_floor"] is None:
                continue
            judged = ("judged on its own objective" if t["own_floor"] > own_floor
                      else "judged on F like the others")
            lines.append(f"{tool} regularizes its intercept: 'own gap' is to the optimum of "
                         f"its own objective, {t['own_floor']:.1e} above F* in F, so it is "
                         + judged)
    lines.append("\ntrain s: the fit alone (mpi_dml: the sum of its epoch_s); load s: reading "
                 "the file (mpi_dml: wall s less train s, start-up included)")
    if "allreduce" in results:
        a = results["allreduce"]
        lines += ["", "where mpi_dml's time goes, per iteration (means of its own timers, "
                      "compute and allreduce each the slowest rank's, so at 2 ranks 'other' "
                      "can be below 0; allreduce includes waiting for the slowest rank):",
                  where_table(results), "",
                  f"Allreduce fitted to bench_allreduce.py at 2 ranks here: alpha "
                  f"{a['alpha_s'] * 1e6:.2f} us, beta {a['beta_s_per_byte'] * 1e9:.3f} ns/byte "
                  f"({1 / max(a['beta_s_per_byte'], 1e-30) / 1e9:.2f} GB/s)"]
        for name, p in results["problems"].items():
            modelled = model_for(p, a)
            if modelled is None:
                continue
            fit, rows = modelled
            p["model"] = {"fit": fit, "rows": rows}
            lines += ["", f"{name}: modelled seconds per L-BFGS iteration at P ranks, strong "
                          f"scaling ({p['rows']} rows split over P; 'weak ms': every rank keeps "
                          f"{p['rows']} rows); {fit['evaluations']:.2f} evaluations an iteration, "
                          f"each compute {fit['fixed_s'] * 1e3:.3f} ms + "
                          f"{fit['per_row_s'] * 1e9:.2f} ns a row (fitted to ranks "
                          f"{fit['from_ranks']}) and one Allreduce of {fit['bytes']} bytes",
                      model_table(rows)]
        lines.append("Allreduce assumed: Rabenseifner's (recursive-halving reduce-scatter, "
                     "recursive-doubling allgather), 2 log2(P) alpha + 2 (P-1)/P bytes beta; "
                     "net: a real interconnect, alpha 2 us, beta 1/(10 GB/s). Compute per "
                     "row assumed constant (no cache effects) and every rank's share "
                     "equal; the fixed part is what did not halve from 1 to 2 ranks: the L-BFGS vector work over all "
                     "weights, which every rank repeats, and on a node whose ranks share "
                     "one memory bus, the bandwidth they share. Neither shrinks with P.")
    lines.append(f"\n1-minute load average: {results['machine']['load_avg_1min']} at the start, "
                 f"{results['load_avg_1min_end']} at the end")
    lines.append("\ntarget:")
    for name, p in results["problems"].items():
        what = (f"  {name}: mpi_dml at 2 ranks reaches {cp.WITHIN:g} of F* in <= 1/{target} "
                f"the train time of the faster peer: ")
        mine = p["tools"].get("mpi_dml x2")
        peers = {k: t for k, t in p["tools"].items()
                 if not k.startswith("mpi_dml") and t["reached"]}
        if not (mine and mine["reached"] and peers):
            why = (results["skipped"].get("mpi_dml x2") or
                   ("mpi_dml x2 did not reach it" if mine else "add 2 to --ranks")
                   if not (mine and mine["reached"]) else "no peer reached it")
            lines.append(what + f"not measured ({why})")
            continue
        peer, t = min(peers.items(), key=lambda kv: kv[1]["train_s"])
        speed = t["train_s"] / mine["train_s"]
        lines.append(what + f"{speed:.2f}x {peer}'s  {common.verdict(speed >= target)}")
        speed = t["train_s"] / mine["wall_s"]
        lines.append(f"  {name}: the same with mpi_dml's whole command (wall s): {speed:.2f}x  "
                     f"{common.verdict(speed >= target)}")
    return "\n".join(lines)
