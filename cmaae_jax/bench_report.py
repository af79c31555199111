"""One sitting's benchmark JSONs side by side: the PyTorch reference against cmaae_jax; and
the ratios of several sittings together.

    python launch/bench_report.py runs/bench/*.json     # after scripts/cpu_pair_bench.sh
    python launch/bench_report.py runs/bench/sitting*/  # one folder per sitting: the range

Files written by `../shared/bench/torch_reference.py --json` (framework "torch") and by
`launch/benchmark.py --json` (framework "jax") are grouped by batch size. For each batch the
table gives the medians over that framework's runs and the ratios issue 15 sets targets for:
training throughput (torch's step time / ours), MSFR time per 512x512 image (ours / torch's)
and peak resident memory (ours / torch's), with the machine's float32 matmul rate measured in
the JAX runs. Only ratios within one sitting mean anything (the machines change).

A torch run whose JSON names a `host_allocator` other than "system" (scripts/cpu_pair_bench.sh
adds one where it ran the reference with tcmalloc preloaded too) is kept out of the table: the
reference as shipped runs on the system malloc. Such runs get a line of their own, with our
ratios against them (like for like where our runs preloaded the same allocator).

The reference's own step time moves by 5-10% between sittings on one machine (BENCHMARKS.md),
so a ratio near its bound is decided by the sitting. `across_sittings` gives each ratio of
each sitting (a folder of one sitting's JSONs), their range and in how many the target was
met: a verdict over several sittings, not one. Within a sitting, runs of one side whose times
differ by more than SPREAD_LIMIT were disturbed (the median of two is their mean): the table
says so, and `across_sittings` shows that ratio in parentheses, out of its range and count.
"""

import glob
import json
import os
import statistics

# Issue 15's targets: (ratio, how it reads, the bound).
TARGETS = {
    "train": ("training patches/s, ours / torch", ">=", 1.5),
    "msfr": ("MSFR time per image, ours / torch", "<=", 0.8),
    "rss": ("peak RSS, ours / torch", "<=", 1.1),
}


# Runs of one side in one sitting whose step (or map) times differ by more than this share of
# the shortest: one of them was disturbed (another process, a throttled core). A quiet
# sitting's runs differ by a few percent; a disturbed one read 70% (BENCHMARKS.md,
# forty-sixth session).
SPREAD_LIMIT = 0.25
_TIMES = {"train": "train_step_s_median", "msfr": "infer_ms_per_image_median"}


def load(paths) -> dict:
    """{batch: {"torch": [run, ...], "jax": [...], "torch_preloaded": [...]}} of the JSON
    files at `paths`; "torch_preloaded": the reference's runs with a malloc preloaded."""
    out = {}
    for path in paths:
        with open(path) as fh:
            run = json.load(fh)
        framework = run.get("framework")
        if framework not in ("torch", "jax"):
            raise ValueError(f"{path}: not a benchmark JSON (framework={framework!r})")
        if framework == "torch" and run.get("host_allocator", "system") != "system":
            framework = "torch_preloaded"
        groups = out.setdefault(int(run["batch"]), {"torch": [], "jax": [], "torch_preloaded": []})
        groups[framework].append(run)
    return out


def _median(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratios(torch_runs, jax_runs) -> dict:
    """The three target ratios (None where a side lacks the measurement)."""
    t_step, j_step = (
        _median(torch_runs, "train_step_s_median"),
        _median(jax_runs, "train_step_s_median"),
    )
    t_ms = _median(torch_runs, "infer_ms_per_image_median")
    j_ms = _median(jax_runs, "infer_ms_per_image_median")
    t_rss, j_rss = _median(torch_runs, "peak_rss_mb"), _median(jax_runs, "peak_rss_mb")
    div = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
    return {"train": div(t_step, j_step), "msfr": div(j_ms, t_ms), "rss": div(j_rss, t_rss)}


def spread(runs, key):
    """(longest - shortest) / shortest of the runs' `key` (None with fewer than two)."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return (max(values) - min(values)) / min(values) if len(values) > 1 else None


def disturbed(torch_runs, jax_runs) -> dict:
    """{target: [(side, spread), ...]} for the timed targets (training, map) whose runs on
    one side or both differ by more than SPREAD_LIMIT (`spread`), each such side named."""
    out = {}
    for target, key in _TIMES.items():
        for side, runs in (("torch", torch_runs), ("cmaae_jax", jax_runs)):
            value = spread(runs, key)
            if value is not None and value > SPREAD_LIMIT:
                out.setdefault(target, []).append((side, value))
    return out


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_ratio(value, bound) -> str:
    """`value` to 2 decimals, more where 2 would print it as the bound it misses or meets by
    less than the rounding (1.4978 against 1.5: "1.498", not "1.50")."""
    digits = 2
    while value is not None and value != bound and digits < 6:
        if _fmt(value, digits) != _fmt(bound, digits):
            break
        digits += 1
    return _fmt(value, digits)


def met(target: str, value) -> bool:
    """Whether `value` meets TARGETS[target] (False where it is missing)."""
    _, sense, bound = TARGETS[target]
    return value is not None and (value >= bound if sense == ">=" else value <= bound)


def table(batch: int, torch_runs, jax_runs) -> str:
    """Markdown table of one batch size."""
    r = ratios(torch_runs, jax_runs)
    rows = [
        ("train step (s)", "train_step_s_median", "train", 2),
        ("MSFR map 512x512 (ms)", "infer_ms_per_image_median", "msfr", 0),
        ("peak RSS (MB)", "peak_rss_mb", "rss", 0),
    ]
    lines = [
        f"batch {batch}: {len(torch_runs)} torch run(s), {len(jax_runs)} cmaae_jax run(s)",
        "",
        "| | torch | cmaae_jax | ratio | target | met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for label, key, target, digits in rows:
        _, sense, bound = TARGETS[target]
        ok = met(target, r[target])
        lines.append(
            f"| {label} | {_fmt(_median(torch_runs, key), digits)} | "
            f"{_fmt(_median(jax_runs, key), digits)} | {_fmt_ratio(r[target], bound)}x | "
            f"{sense} {bound}x | "
            f"{'yes' if ok else 'no'} |"
        )
    lines.append(f"| compile (s) | - | {_fmt(_median(jax_runs, 'compile_s'), 1)} | | < 60 | |")
    gflops = _median(jax_runs, "matmul_f32_gflops")
    others = [r.get("other_processes_cpu_s") for r in torch_runs + jax_runs]
    allocators = {r["host_allocator"] for r in jax_runs if "host_allocator" in r}
    lines += [
        "",
        f"float32 matmul rate (JAX runs): {_fmt(gflops, 0)} GFLOP/s; other processes' CPU "
        f"seconds per run: {', '.join(_fmt(o, 2) for o in others)} (near 0: a quiet machine); "
        f"host allocator (JAX runs): {', '.join(sorted(allocators)) or '-'}",
    ]
    for target, sides in disturbed(torch_runs, jax_runs).items():
        for side, value in sides:
            lines.append(
                f"disturbed: the {side} runs' {_TIMES[target]} differ by {value:.0%} (more "
                f"than {SPREAD_LIMIT:.0%}): one run was disturbed; this ratio needs another "
                "sitting"
            )
    return "\n".join(lines)


def preloaded_line(preloaded_runs, jax_runs) -> str:
    """The reference's runs with a malloc preloaded, and our ratios against them."""
    allocators = ", ".join(sorted({r["host_allocator"] for r in preloaded_runs}))
    r = ratios(preloaded_runs, jax_runs)
    return (
        f"The reference with {allocators} preloaded ({len(preloaded_runs)} run(s)): step "
        f"{_fmt(_median(preloaded_runs, 'train_step_s_median'))} s, MSFR "
        f"{_fmt(_median(preloaded_runs, 'infer_ms_per_image_median'), 0)} ms, peak RSS "
        f"{_fmt(_median(preloaded_runs, 'peak_rss_mb'), 0)} MB; cmaae_jax against it: "
        f"training {_fmt(r['train'])}x, MSFR {_fmt(r['msfr'])}x, RSS {_fmt(r['rss'])}x"
    )


def report(paths) -> str:
    parts = []
    for batch, g in sorted(load(paths).items()):
        part = table(batch, g["torch"], g["jax"])
        if g["torch_preloaded"]:
            part += "\n" + preloaded_line(g["torch_preloaded"], g["jax"])
        parts.append(part)
    return "\n\n".join(parts)


def sitting_paths(folder: str) -> list:
    """The benchmark JSONs of one sitting's folder (a clear error where there are none)."""
    paths = sorted(glob.glob(os.path.join(folder, "*.json")))
    if not paths:
        raise ValueError(f"{folder}: no benchmark JSON in this sitting's folder")
    return paths


def sitting_names(folders) -> list:
    """Each folder's name, with its parent's where names repeat (runs/a/sitting1 and
    runs/b/sitting1: a/sitting1, b/sitting1)."""
    parts = [os.path.normpath(f).split(os.sep) for f in folders]
    names = [p[-1] for p in parts]
    if len(set(names)) < len(names):
        names = ["/".join(p[-2:]) for p in parts]
    return names


def across_sittings(folders) -> str:
    """Markdown table of the target ratios of each sitting (one folder of JSONs each, the
    reference's plain runs against ours), per batch size: one column per sitting, then the
    range and the number of sittings that met the target."""
    by_sitting = [load(sitting_paths(f)) for f in folders]
    batches = sorted({b for groups in by_sitting for b in groups})
    names = sitting_names(folders)
    lines = [
        f"{len(folders)} sitting(s): " + ", ".join(names),
        "",
        "| batch | ratio | " + " | ".join(names) + " | range | target | met |",
        "|---:|---|" + "---:|" * len(names) + "---:|---:|---:|",
    ]
    for batch in batches:
        groups = [g.get(batch, {"torch": [], "jax": []}) for g in by_sitting]
        per_sitting = [ratios(g["torch"], g["jax"]) for g in groups]
        flagged = [disturbed(g["torch"], g["jax"]) for g in groups]
        for target in TARGETS:
            row = _sittings_row(batch, target, per_sitting, flagged)
            if row:
                lines.append(row)
    return "\n".join(lines)


def _sittings_row(batch, target, per_sitting, flagged) -> str | None:
    """One row of `across_sittings` (None where no sitting measured `target`): a disturbed
    sitting's ratio in parentheses, out of the range and the count."""
    label, sense, bound = TARGETS[target]
    values = [r.get(target) for r in per_sitting]
    if all(v is None for v in values):
        return None
    counted = [v for v, f in zip(values, flagged, strict=True) if v is not None and target not in f]
    cells = []
    for value, flags in zip(values, flagged, strict=True):
        text = "-" if value is None else f"{_fmt_ratio(value, bound)}x"
        cells.append(f"({text})" if value is not None and target in flags else text)
    span = "-"
    if counted:
        span = f"{_fmt_ratio(min(counted), bound)}-{_fmt_ratio(max(counted), bound)}x"
    count = f"{sum(met(target, v) for v in counted)} of {len(counted)}"
    left_out = sum(v is not None for v in values) - len(counted)
    if left_out:
        count += f" ({left_out} disturbed)"
    cells = " | ".join(cells)
    return f"| {batch} | {label} | {cells} | {span} | {sense} {bound}x | {count} |"
