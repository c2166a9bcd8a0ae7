"""Efficiency profiler: areas by hand, a CPU-burning child, exit codes, per-case marks, no-GPU reporting.

The machine running the tests is shared and noisy, so measured figures are checked within generous bounds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from cps3d.cli import main
from cps3d.evaluation import meters
from cps3d.evaluation.profile_report import window_summary
from cps3d.evaluation.profiler import NO_GPU, ResourceProfiler, Sample, profile_command

BURN = """
import time
t0 = time.process_time()
while time.process_time() - t0 < 2.0:  # two seconds of CPU time on one core
    pass
time.sleep(1.0)
"""


@pytest.fixture
def no_gpu(monkeypatch):
    """Make NVML and torch.cuda unavailable, as on a machine without an NVIDIA driver."""
    import pynvml

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    monkeypatch.setattr(meters, "_listdir", lambda path: [])
    monkeypatch.delitem(sys.modules, "torch", raising=False)


def test_window_areas_by_hand():
    # CPU values average the interval ending at their sample: 50 % over [0, 1] s, 100 % over [1, 3] s.
    # GPU memory 1000, 3000, 3000 MB with a 2048 MB allowance counts 0, 952, 952: trapezoids 476 + 1904.
    samples = [Sample(0.0, None, None, 10.0, 1.0, 1000.0), Sample(1.0, 50.0, 25.0, 30.0, 3.0, 3000.0),
               Sample(3.0, 100.0, 50.0, 20.0, 2.0, 3000.0)]
    s = window_summary(samples, 0.0, 3.0, 2048.0, has_gpu=True)
    assert s.running_time_s == 3.0
    assert s.cpu_area_percent_s == pytest.approx(50 * 1 + 100 * 2)
    assert s.process_cpu_area_percent_s == pytest.approx(25 * 1 + 50 * 2)
    assert s.gpu_area_mb_s == pytest.approx(0.5 * 952 * 1 + 952 * 2)
    assert s.peak_gpu_mb == 3000.0 and s.peak_ram_mb == 30.0 and s.peak_process_rss_mb == 3.0
    # the window [1, 3] only
    w = window_summary(samples, 1.0, 3.0, 0.0, has_gpu=True)
    assert w.running_time_s == 2.0 and w.cpu_area_percent_s == pytest.approx(200.0)
    assert w.gpu_area_mb_s == pytest.approx(6000.0)
    # without a GPU the GPU figures are None, not 0
    n = window_summary([Sample(0.0, None, None, 1.0, 1.0, None), Sample(1.0, 10.0, 5.0, 1.0, 1.0, None)],
                          0.0, 1.0, 0.0, has_gpu=False)
    assert n.peak_gpu_mb is None and n.gpu_area_mb_s is None


def test_burning_child_cpu_area_and_running_time(tmp_path, no_gpu):
    out = tmp_path / "prof"
    code = profile_command([sys.executable, "-c", BURN], out, interval=0.1)
    assert code == 0
    report = json.loads((out / "profile.json").read_text())
    total, cores = report["total"], report["cpu_cores"]
    with open("/proc/stat") as f:
        assert cores == sum(1 for line in f if line.startswith("cpu") and line[3].isdigit())
    # 2 s of CPU then 1 s asleep: about 3 s, longer when other work slows the burn down
    assert 2.9 <= total["running_time_s"] <= 12.0
    expected = 100.0 / cores * 2.0  # one busy core for 2 s, in % of all cores times seconds
    assert 0.4 * expected <= total["process_cpu_area_percent_s"] <= 1.6 * expected
    # the whole machine was at least as busy as the child (and at most 100 % all along)
    assert total["cpu_area_percent_s"] >= 0.4 * expected
    assert total["cpu_area_percent_s"] >= 0.8 * total["process_cpu_area_percent_s"]
    assert total["cpu_area_percent_s"] <= 100.0 * total["running_time_s"] * 1.05
    assert total["peak_process_rss_mb"] > 1.0 and total["peak_ram_mb"] > total["peak_process_rss_mb"]
    # no GPU: None in the JSON, said in words, and no GPU column that looks measured
    assert report["gpu"] == NO_GPU and total["peak_gpu_mb"] is None and total["gpu_area_mb_s"] is None
    header = (out / "samples.csv").read_text().splitlines()
    assert header[0].split(",")[-1] == "gpu_used_mb" and all(line.endswith(",") for line in header[1:])
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_gpu_report_text(no_gpu):
    with ResourceProfiler(interval=0.05) as prof:
        time.sleep(0.15)
    assert not prof.has_gpu
    text = prof.report(gpu_allowance_mb=2048).format()
    assert "GPU                 no GPU" in text
    assert "peak GPU memory     no GPU" in text and "GPU area            no GPU" in text


def test_exit_code_pass_through(tmp_path):
    assert profile_command([sys.executable, "-c", "import sys; sys.exit(7)"], tmp_path / "a", plot=False) == 7
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert profile_command([sys.executable, "-c", kill], tmp_path / "b", plot=False) == 128 + signal.SIGTERM
    report = json.loads((tmp_path / "b" / "profile.json").read_text())
    assert report["signal"] == "SIGTERM" and report["exit_code"] == 143
    with pytest.raises(FileNotFoundError, match="command not found"):
        profile_command(["cps3d-no-such-command-xyz"], tmp_path / "c")


def test_cli_profile_passes_exit_code(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["profile", "-o", str(out), "--interval", "0.05", "--no-plot", "--",
               sys.executable, "-c", "import sys; sys.exit(5)"])
    assert rc == 5
    err = capsys.readouterr().err
    assert "running time" in err and "exit code 5" in err
    assert (out / "profile.json").is_file() and (out / "samples.csv").is_file()
    assert json.loads((out / "profile.json").read_text())["gpu_allowance_mb"] == 2048  # FLARE's, by default
    assert main(["profile", "-o", str(out), "--", "cps3d-no-such-command-xyz"]) == 127
    assert main(["profile", "-o", str(out)]) == 2  # no command


def test_cli_profile_output_that_is_a_file_is_refused_before_the_command_runs(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    marker = tmp_path / "ran"
    rc = main(["profile", "-o", str(tmp_path / "taken"), "--no-plot", "--",
               sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    assert rc == 2
    assert f"{tmp_path / 'taken'}: the output folder (-o) exists and is not a folder" in capsys.readouterr().err
    assert not marker.exists()


def test_in_process_cases(tmp_path):
    with ResourceProfiler(interval=0.05) as prof:
        with prof.case("case_sleep"):
            time.sleep(0.3)
        with prof.case("case_burn"):
            t0 = time.process_time()
            while time.process_time() - t0 < 0.3:
                pass
    report = prof.write(tmp_path, gpu_allowance_mb=0)
    names = [c[0] for c in report.cases]
    assert names == ["case_sleep", "case_burn"]
    sleep, burn = report.cases[0][3], report.cases[1][3]
    assert 0.28 <= sleep.running_time_s <= 1.5 and 0.28 <= burn.running_time_s <= 3.0
    # this process burnt ~0.3 s of CPU in the second case only
    assert burn.process_cpu_area_percent_s > sleep.process_cpu_area_percent_s + 0.3 * 100 / report.cpu_cores * 0.4
    assert report.total.running_time_s >= sleep.running_time_s + burn.running_time_s - 1e-6
    lines = (tmp_path / "cases.csv").read_text().splitlines()
    assert lines[0].startswith("case,start_s,end_s,running_time_s") and len(lines) == 3
    assert (tmp_path / "profile.png").is_file() and (tmp_path / "samples.csv").is_file()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="interval"):
        ResourceProfiler(interval=0)
    with pytest.raises(ValueError, match="no command"):
        profile_command([], "unused")
    with pytest.raises(RuntimeError, match="start the profiler"):
        with ResourceProfiler().case("x"):
            pass


def test_machine_cpu_arithmetic():
    # psutil's counters split as /proc/stat is: a stand-in with known counters
    class Times:
        _fields = ("user", "nice", "system", "idle", "iowait", "guest")

        def __init__(self, user, idle):
            self.user, self.nice, self.system, self.idle, self.iowait, self.guest = user, 0.0, 0.0, idle, 0.0, 5.0

    (b0, t0), (b1, t1) = meters.busy_and_total(Times(10.0, 90.0)), meters.busy_and_total(Times(40.0, 160.0))
    assert (b1 - b0) / (t1 - t0) == pytest.approx(30.0 / 100.0)  # guest time is not counted twice


@pytest.mark.gpu
def test_gpu_memory_is_measured_when_a_gpu_exists(tmp_path):
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        pytest.skip("no NVIDIA driver on this machine")
    if count == 0:
        pytest.skip("no GPU on this machine")
    with ResourceProfiler(interval=0.05) as prof:
        time.sleep(0.2)
    report = prof.report(gpu_allowance_mb=0)
    assert prof.has_gpu and report.gpu != NO_GPU
    assert report.total.peak_gpu_mb is not None and report.total.peak_gpu_mb > 0
    assert report.total.gpu_area_mb_s is not None and report.total.gpu_area_mb_s > 0


def test_meters_agree_with_the_kernel_counters():
    # psutil reads the same counters the profiler used to parse from /proc by hand: same cores, RAM and RSS
    with open("/proc/stat") as f:
        cores = sum(1 for line in f if line.startswith("cpu") and line[3].isdigit())
    assert meters.machine_cpu()[2] == cores
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f if ":" in line}
    used = (info["MemTotal"] - info["MemAvailable"]) / 1024.0
    assert abs(meters.machine_ram_used_mb() - used) <= 0.02 * info["MemTotal"] / 1024.0  # the machine is shared
    # RSS of a tree: a child with no children of its own, so that the tree is exactly that one process
    probe = (
        "import os; from cps3d.evaluation.meters import ProcessTree\n"
        "ballast = bytearray(64 * 1024 * 1024)  # 64 MB resident (bytearray writes its zeros)\n"
        "rss = ProcessTree().read(os.getpid())[1]\n"
        "statm = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
        "print(rss, statm)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    rss, statm_mb = (float(v) for v in out.split())
    assert rss >= 64 and abs(rss - statm_mb) <= 2


def test_process_rss_reads_this_process_in_mb():
    import numpy as np

    from cps3d.evaluation.meters import process_rss_mb

    before = process_rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MB, written (so resident)
    grown = process_rss_mb() - before
    assert 48 < grown < 200, grown
    del block
