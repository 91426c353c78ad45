"""The PNG figures: speed-up vs budget per policy, absolute tokens/s of our policies beside the peers,
and tree depth vs width for talon vs eagle3 (the paper's deep-and-narrow vs shallow-and-wide picture).
matplotlib is imported lazily (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from talon_rt.talon.policies import BUDGET, CHAIN_DEPTH, EAGLE3, MU, NAMES, TALON, policy_spec

# one colour per policy, in registry order
PALETTE = ("0.4", "tab:green", "tab:blue", "tab:red", "tab:purple", "tab:olive", "tab:orange", "tab:brown",
           "tab:pink", "tab:cyan")
COLORS = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(NAMES)}
BUDGETED = tuple(n for n in NAMES if BUDGET in policy_spec(n).knobs)   # one point per budget
FIXED = tuple(n for n in NAMES if n not in BUDGETED)   # one horizontal line each


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def speedup_vs_budget(rows: Sequence[dict], path: Path) -> Path:
    plt = _pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    temps = sorted({r["temperature"] for r in rows})
    fig, axes = plt.subplots(len(temps), len(datasets), figsize=(4.2 * len(datasets), 3.4 * len(temps)),
                             squeeze=False)  # rows: temperatures, columns: datasets
    for (i, t), (j, ds) in ((it, jd) for it in enumerate(temps) for jd in enumerate(datasets)):
        ax = axes[i][j]
        sub = [r for r in rows if r["dataset"] == ds and r["temperature"] == t and r["speedup_vs_ar"] is not None]
        for policy in BUDGETED:
            variants = sorted({(r["mu"], r.get("root_k")) for r in sub if r["policy"] == policy},
                              key=lambda v: (v[0] or 0, v[1] or 0))
            for mu, k in variants:
                pts = sorted((r["budget"], r["speedup_vs_ar"]) for r in sub
                             if r["policy"] == policy and (r["mu"], r.get("root_k")) == (mu, k))
                if pts:
                    label = policy + (f" mu={mu:g}" if mu is not None and MU in policy_spec(policy).knobs else "") + \
                        (f" K={k}" if k is not None else "")
                    ax.plot(*zip(*pts), marker="o", color=COLORS[policy], label=label)
        for policy in FIXED:
            for r in (r for r in sub if r["policy"] == policy):
                ax.axhline(r["speedup_vs_ar"], color=COLORS[policy], ls="--", lw=1, label=_bar_label(r))
        ax.set_xscale("log", base=2)
        ticks = sorted({r["budget"] for r in sub if r["policy"] in BUDGETED})
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_title(f"{ds}, T={t:g}")
        ax.set_xlabel("budget N (tree nodes incl. root)")
        ax.set_ylabel("speed-up over ar (tokens/s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PEER_COLOR = "tab:orange"


def _best_per_policy(rows: Sequence[dict]) -> list[dict]:
    """Each policy's fastest row (its best budget / mu / K), in policy order."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["policy"] not in best or r["tokens_per_s"] > best[r["policy"]]["tokens_per_s"]:
            best[r["policy"]] = r
    return [best[p] for p in COLORS if p in best]


def _bar_label(r: dict) -> str:
    """A policy without a budget by name (a chain with its depth), the others with their budget."""
    knobs = policy_spec(r["policy"]).knobs
    if CHAIN_DEPTH in knobs:
        return f"{r['policy']} (depth {r['budget'] - 1})"
    return r["policy"] if BUDGET not in knobs else f"{r['policy']} (N={r['budget']})"


def tokens_per_s_bars(rows: Sequence[dict], peers: Sequence[dict], path: Path) -> Path | None:
    """Per dataset (greedy rows, else the lowest temperature run): median tokens/s of each of our
    policies at its best budget and of each peer configuration that ran, p10–p90 as error bars."""
    if not rows:
        return None
    temp = 0.0 if any(r["temperature"] == 0 for r in rows) else min(r["temperature"] for r in rows)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["temperature"] == temp))
    ok_peers = [p for p in peers if p.get("status") == "ok" and p.get("tokens_per_s")]
    plt = _pyplot()
    bars = {ds: [(f"talon-rt {_bar_label(r)}", r, COLORS[r["policy"]])
                 for r in _best_per_policy([r for r in rows if r["dataset"] == ds and r["temperature"] == temp])]
            + [(p["peer"], p, PEER_COLOR) for p in ok_peers if p["dataset"] == ds] for ds in datasets}
    height = max(len(b) for b in bars.values())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 0.42 * height + 1.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        labels, values, lo, hi, colors = [], [], [], [], []
        for label, r, color in bars[ds]:
            v = r["tokens_per_s"]
            labels.append(label)
            values.append(v)
            lo.append(v - r["tokens_per_s_p10"] if r.get("tokens_per_s_p10") is not None else 0.0)
            hi.append(r["tokens_per_s_p90"] - v if r.get("tokens_per_s_p90") is not None else 0.0)
            colors.append(color)
        y = list(range(len(labels)))[::-1]
        ax.barh(y, values, xerr=[lo, hi], color=colors, capsize=3, ecolor="0.2")
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlabel("tokens/s (median; bars: p10–p90 over prompts)")
        ax.set_title(f"{ds}, T={temp:g}")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shape_budget(rows: Sequence[dict]) -> int | None:
    """The largest budget that both talon and eagle3 ran with tree shapes recorded."""
    have = {p: {r["budget"] for r in rows if r["policy"] == p and r["depth_width"]} for p in (TALON, EAGLE3)}
    common = have[TALON] & have[EAGLE3] or have[TALON] | have[EAGLE3]
    return max(common) if common else None


def depth_vs_width(rows: Sequence[dict], path: Path) -> Path | None:
    budget = _shape_budget(rows)
    if budget is None:
        return None
    plt = _pyplot()
    fig, (ax, axh) = plt.subplots(1, 2, figsize=(9, 3.8))
    max_depth = max_width = 1
    for policy, dx in ((EAGLE3, -0.12), (TALON, 0.12)):
        counts: dict[tuple[int, int], int] = {}
        for r in rows:
            if r["policy"] == policy and r["budget"] == budget:
                for d, w, n in r["depth_width"]:
                    counts[(d, w)] = counts.get((d, w), 0) + n
        if not counts:
            continue
        total = sum(counts.values())
        max_depth = max(max_depth, *(d for d, _ in counts))
        max_width = max(max_width, *(w for _, w in counts))
        ds, ws, ns = zip(*((d, w, n) for (d, w), n in counts.items()))
        ax.scatter([d + dx for d in ds], ws, s=[800 * n / total for n in ns], alpha=0.5,
                   color=COLORS[policy], label=policy, edgecolors="none")
        depth = {}
        for (d, _w), n in counts.items():
            depth[d] = depth.get(d, 0) + n
        axh.bar([d + dx for d in depth], [n / total for n in depth.values()], width=0.24,
                color=COLORS[policy], label=policy)
    from matplotlib.ticker import MaxNLocator
    for a in (ax, axh):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlim(-0.5, max_depth + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max_width + 1)
    ax.set_xlabel("tree depth (drafted layers)")
    ax.set_ylabel("tree width (widest layer)")
    ax.set_title(f"round tree shapes, N={budget} (area = share of rounds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=0.3)
    axh.set_xlabel("tree depth")
    axh.set_ylabel("share of rounds")
    axh.set_title("depth distribution")
    axh.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(rows: Sequence[dict[str, Any]], out_dir: Path, peers: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The figures into out_dir; returns the paths written."""
    out = []
    if any(r["speedup_vs_ar"] is not None for r in rows):
        out.append(str(speedup_vs_budget(rows, out_dir / "speedup_vs_budget.png")))
    bars = tokens_per_s_bars(rows, peers, out_dir / "tokens_per_s.png")
    if bars is not None:
        out.append(str(bars))
    shape = depth_vs_width(rows, out_dir / "tree_depth_width.png")
    if shape is not None:
        out.append(str(shape))
    return out
