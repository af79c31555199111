"""The side-by-side benchmark table: medians and ratios computed by hand."""

import json

import pytest

from cmaae_jax import bench_report


def _write(tmp_path, name, **fields):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(fields))
    return str(path)


def test_ratios_and_table_of_one_sitting(tmp_path):
    t = dict(framework="torch", batch=512, other_processes_cpu_s=0.3)
    j = dict(framework="jax", batch=512, other_processes_cpu_s=0.5, compile_s=7.0)
    paths = [
        _write(
            tmp_path,
            "t1",
            train_step_s_median=3.0,
            infer_ms_per_image_median=120.0,
            peak_rss_mb=1700.0,
            **t,
        ),
        _write(
            tmp_path,
            "t2",
            train_step_s_median=2.0,
            infer_ms_per_image_median=100.0,
            peak_rss_mb=1800.0,
            **t,
        ),
        _write(
            tmp_path,
            "j",
            train_step_s_median=1.6,
            infer_ms_per_image_median=99.0,
            peak_rss_mb=3500.0,
            matmul_f32_gflops=200.0,
            host_allocator="libtcmalloc_minimal.so.4",
            **j,
        ),
        _write(tmp_path, "small", framework="jax", batch=64, train_step_s_median=0.4),
    ]
    groups = bench_report.load(paths)
    assert sorted(groups) == [64, 512]
    r = bench_report.ratios(groups[512]["torch"], groups[512]["jax"])
    # torch medians: step 2.5 s, MSFR 110 ms, RSS 1750 MB.
    assert r["train"] == pytest.approx(2.5 / 1.6)
    assert r["msfr"] == pytest.approx(99.0 / 110.0)
    assert r["rss"] == pytest.approx(3500.0 / 1750.0)
    text = bench_report.report(paths)
    row = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 2.50 | 1.60 | 1.56x | >= 1.5x | yes |" in row["train step (s)"]
    assert "| 110 | 99 | 0.90x | <= 0.8x | no |" in row["MSFR map 512x512 (ms)"]
    assert "| 1750 | 3500 | 2.00x | <= 1.1x | no |" in row["peak RSS (MB)"]
    assert "200 GFLOP/s" in text
    small, large = [line for line in text.splitlines() if line.startswith("float32")]
    assert small.endswith("host allocator (JAX runs): -")  # a record from before the key
    assert large.endswith("host allocator (JAX runs): libtcmalloc_minimal.so.4")
    # batch 64 has no torch run: its ratios are missing, not invented.
    assert bench_report.ratios([], groups[64]["jax"])["train"] is None


def test_a_file_that_is_not_a_benchmark_is_named(tmp_path):
    path = _write(tmp_path, "other", loss=1.0)
    with pytest.raises(ValueError, match="other.json"):
        bench_report.load([path])


def test_reference_runs_with_a_preloaded_malloc_get_their_own_line(tmp_path):
    common = dict(batch=512, infer_ms_per_image_median=100.0, peak_rss_mb=1000.0)
    paths = [
        _write(tmp_path, "t", framework="torch", train_step_s_median=3.0, **common),
        _write(
            tmp_path,
            "t_tc",
            framework="torch",
            host_allocator="libtcmalloc_minimal.so.4",
            train_step_s_median=2.0,
            **{**common, "infer_ms_per_image_median": 80.0},
        ),
        _write(
            tmp_path,
            "t_sys",
            framework="torch",
            host_allocator="system",
            train_step_s_median=4.0,
            **common,
        ),
        _write(tmp_path, "j", framework="jax", train_step_s_median=2.5, **common),
    ]
    groups = bench_report.load(paths)[512]
    assert [r["train_step_s_median"] for r in groups["torch"]] == [3.0, 4.0]
    assert [r["train_step_s_median"] for r in groups["torch_preloaded"]] == [2.0]
    text = bench_report.report(paths)
    # The table: torch's median step (3.0 + 4.0) / 2 = 3.5 s against 2.5 s: 1.40x.
    assert "| 3.50 | 2.50 | 1.40x |" in text
    line = [t for t in text.splitlines() if t.startswith("The reference with")][0]
    # Against the preloaded run: 2.0 / 2.5 = 0.80x training, 100 / 80 = 1.25x MSFR.
    assert "libtcmalloc_minimal.so.4 preloaded (1 run(s))" in line
    assert "step 2.00 s, MSFR 80 ms" in line
    assert "training 0.80x, MSFR 1.25x, RSS 1.00x" in line


def test_a_ratio_next_to_its_bound_prints_the_digits_that_decide(tmp_path):
    # the forty-fourth session's third sitting: 2.738 / 1.828 = 1.4978, which 2 decimals
    # would print as "1.50x" beside "no"
    t = dict(framework="torch", batch=512, infer_ms_per_image_median=125.0, peak_rss_mb=1738.0)
    j = dict(framework="jax", batch=512, infer_ms_per_image_median=101.8, peak_rss_mb=1570.0)
    paths = [
        _write(tmp_path, "t", train_step_s_median=2.738, **t),
        _write(tmp_path, "j", train_step_s_median=1.828, **j),
    ]
    row = {
        line.split("|")[1].strip(): line
        for line in bench_report.report(paths).splitlines()
        if line.startswith("| ")
    }
    assert "| 2.74 | 1.83 | 1.498x | >= 1.5x | no |" in row["train step (s)"]
    assert "| 125 | 102 | 0.81x | <= 0.8x | no |" in row["MSFR map 512x512 (ms)"]  # 0.8144
    assert "| 1738 | 1570 | 0.90x | <= 1.1x | yes |" in row["peak RSS (MB)"]


def _sitting(folder, torch_step, jax_step, torch_ms=None, jax_ms=None, batch=512):
    folder.mkdir(parents=True, exist_ok=True)
    extra = dict(batch=batch, peak_rss_mb=1000.0)
    _write(folder, f"t{batch}", framework="torch", train_step_s_median=torch_step,
           infer_ms_per_image_median=torch_ms, **extra)  # fmt: skip
    _write(folder, f"j{batch}", framework="jax", train_step_s_median=jax_step,
           infer_ms_per_image_median=jax_ms, **extra)  # fmt: skip
    return str(folder)


def test_sittings_give_each_ratio_its_range_and_the_count_that_met_it(tmp_path):
    folders = [
        _sitting(tmp_path / "s1", 3.0, 2.0, 110.0, 90.0),  # 1.50x (met, at the bound), 0.818x
        _sitting(tmp_path / "s2", 2.8, 2.0, 120.0, 90.0),  # 1.40x, 0.75x (met)
        _sitting(tmp_path / "s3", 3.2, 2.0, 100.0, 90.0),  # 1.60x (met), 0.90x
    ]
    _sitting(tmp_path / "s2", 0.3, 0.25, batch=64)  # one sitting also has batch 64
    text = bench_report.across_sittings(folders)
    rows = {
        (line.split("|")[1].strip(), line.split("|")[2].strip()): line
        for line in text.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    }
    train = rows[("512", bench_report.TARGETS["train"][0])]
    assert "| 1.50x | 1.40x | 1.60x | 1.40-1.60x | >= 1.5x | 2 of 3 |" in train
    msfr = rows[("512", bench_report.TARGETS["msfr"][0])]
    # 90/110 = 0.818, 90/120 = 0.75, 90/100 = 0.90
    assert "| 0.82x | 0.75x | 0.90x | 0.75-0.90x | <= 0.8x | 1 of 3 |" in msfr
    assert (
        "| 1.00x | 1.00x | 1.00x | 1.00-1.00x | <= 1.1x | 3 of 3 |"
        in rows[("512", bench_report.TARGETS["rss"][0])]
    )
    # batch 64 was measured in one sitting only: the others' cells are "-", not invented;
    # no MSFR was timed there, so that row is left out.
    small = rows[("64", bench_report.TARGETS["train"][0])]
    assert "| - | 1.20x | - | 1.20-1.20x | >= 1.5x | 0 of 1 |" in small
    assert ("64", bench_report.TARGETS["msfr"][0]) not in rows
    assert text.splitlines()[0] == "3 sitting(s): s1, s2, s3"


def test_a_sitting_folder_without_json_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no benchmark JSON"):
        bench_report.across_sittings([str(tmp_path / "empty")])


def test_a_disturbed_run_is_named_and_left_out_of_the_range(tmp_path):
    # sitting 1: the reference's second run took 0.44 s a step against 0.26 s in its first,
    # (0.44 - 0.26) / 0.26 = 69% > 25%; its maps 122 and 130 ms differ by 6.6%: quiet
    s1 = tmp_path / "s1"
    s1.mkdir()
    t = dict(framework="torch", batch=64, peak_rss_mb=650.0)
    _write(s1, "t1", train_step_s_median=0.26, infer_ms_per_image_median=122.0, **t)
    _write(s1, "t2", train_step_s_median=0.44, infer_ms_per_image_median=130.0, **t)
    _write(s1, "j", framework="jax", batch=64, train_step_s_median=0.2,
           infer_ms_per_image_median=90.0, peak_rss_mb=650.0)  # fmt: skip
    text = bench_report.report(sorted(str(p) for p in s1.iterdir()))
    flagged = [line for line in text.splitlines() if line.startswith("disturbed")]
    assert len(flagged) == 1
    assert "torch runs' train_step_s_median differ by 69%" in flagged[0]
    folders = [str(s1), _sitting(tmp_path / "s2", 0.25, 0.2, 120.0, 90.0, batch=64)]
    rows = {
        line.split("|")[2].strip(): line
        for line in bench_report.across_sittings(folders).splitlines()
        if line.startswith("| 64 ")
    }
    # sitting 1's training ratio, median 0.35 / 0.2 = 1.75x, in parentheses and not counted;
    # sitting 2's 0.25 / 0.2 = 1.25x alone makes the range and the count
    train = rows[bench_report.TARGETS["train"][0]]
    assert "| (1.75x) | 1.25x | 1.25-1.25x | >= 1.5x | 0 of 1 (1 disturbed) |" in train
    # the maps were quiet in both sittings: 90 / 126 = 0.714, 90 / 120 = 0.75
    msfr = rows[bench_report.TARGETS["msfr"][0]]
    assert "| 0.71x | 0.75x | 0.71-0.75x | <= 0.8x | 2 of 2 |" in msfr


def test_sittings_of_the_same_name_are_told_apart_by_their_parent():
    assert bench_report.sitting_names(["runs/a/s1", "runs/a/s2"]) == ["s1", "s2"]
    assert bench_report.sitting_names(["runs/a/s1/", "runs/b/s1"]) == ["a/s1", "b/s1"]


def test_both_sides_disturbed_are_both_named(tmp_path):
    # the reference's maps 100 and 140 ms: (140 - 100) / 100 = 40%; ours 90 and 120 ms:
    # (120 - 90) / 90 = 33%; both over 25%, each side gets its own line; the steps are quiet
    t = dict(framework="torch", batch=512, peak_rss_mb=1700.0, train_step_s_median=2.5)
    _write(tmp_path, "t1", infer_ms_per_image_median=100.0, **t)
    _write(tmp_path, "t2", infer_ms_per_image_median=140.0, **t)
    j = dict(framework="jax", batch=512, peak_rss_mb=1400.0, train_step_s_median=1.5)
    _write(tmp_path, "j1", infer_ms_per_image_median=90.0, **j)
    _write(tmp_path, "j2", infer_ms_per_image_median=120.0, **j)
    text = bench_report.report(sorted(str(p) for p in tmp_path.iterdir()))
    flagged = [line for line in text.splitlines() if line.startswith("disturbed")]
    assert len(flagged) == 2
    assert "torch runs' infer_ms_per_image_median differ by 40%" in flagged[0]
    assert "cmaae_jax runs' infer_ms_per_image_median differ by 33%" in flagged[1]
