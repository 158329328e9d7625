import json

import pytest

from mimirate.cli import main


@pytest.fixture()
def table_file(tmp_path, quality_table):
    path = tmp_path / "q.json"
    quality_table.save(path)
    return path


@pytest.fixture()
def trace_dir(tmp_path):
    d = tmp_path / "traces"
    d.mkdir()
    (d / "a").write_text("0 1.0\n2 0.5\n4 1.5\n")
    (d / "b").write_text("\n".join(str(t) for t in range(0, 6000, 3)) + "\n")  # Mahimahi
    (d / "LICENSE").write_text("not a trace")
    return d


def test_simulate_json_and_report(tmp_path, capsys, table_file, trace_dir):
    rc = main(
        [
            "simulate",
            "--trace",
            str(trace_dir),
            "--controller",
            "adaptive,fixed-4+red1",
            "--duration",
            "6",
            "--loss",
            "0.1",
            "--quality-table",
            str(table_file),
            "--json",
            "--report",
            str(tmp_path / "rep"),
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["controllers"]) == {"adaptive", "fixed-4+red1"}
    assert len(doc["runs"]) == 4  # two traces x two controllers
    assert (tmp_path / "rep" / "cdf.png").stat().st_size > 1000
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["controllers"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--controller", "nonsense"],
        ["--controller", "fixed-99"],
        ["--gilbert", "0.1"],
        ["--loss", "2"],
        ["--duration", "-1"],
    ],
)
def test_simulate_bad_arguments(capsys, table_file, trace_dir, extra):
    rc = main(["simulate", "--trace", str(trace_dir), "--quality-table", str(table_file), *extra])
    assert rc == 2
    assert "error" in capsys.readouterr().err


def test_simulate_missing_trace(capsys, table_file, tmp_path):
    assert (
        main(["simulate", "--trace", str(tmp_path / "no"), "--quality-table", str(table_file)]) == 2
    )


def test_simulate_offline_reports_its_bound(capsys, table_file, trace_dir):
    args = ["simulate", "--trace", str(trace_dir / "a"), "--controller", "adaptive,offline"]
    args += ["--duration", "3", "--quality-table", str(table_file), "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    ctl = doc["controllers"]
    assert doc["offline_bound_qoe"] >= max(ctl["adaptive"]["mean_qoe"], ctl["offline"]["mean_qoe"])
    assert "offline_expected_bound_qoe" not in doc  # no random loss: one bound
    floor = doc["late_lost_floor_pct"]
    assert 0 <= floor <= min(ctl["adaptive"]["late_lost_pct"], ctl["offline"]["late_lost_pct"])


def test_simulate_offline_with_random_loss_reports_the_expected_bound(
    capsys, table_file, trace_dir
):
    args = ["simulate", "--trace", str(trace_dir / "a"), "--controller", "adaptive,offline"]
    args += ["--duration", "3", "--quality-table", str(table_file), "--loss", "0.1", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    # Knowing which packets are lost is worth something: the oracle's bound is higher.
    assert 0 < doc["offline_expected_bound_qoe"] < doc["offline_bound_qoe"]
    # The oracle's floor holds in every run; the blind one in expectation (repeating every
    # packet's frames in the next, p**2 = 1 % of frames are still missing).
    assert doc["late_lost_floor_pct"] <= doc["controllers"]["adaptive"]["late_lost_pct"]
    assert 0.5 < doc["expected_late_lost_floor_pct"] < 100
