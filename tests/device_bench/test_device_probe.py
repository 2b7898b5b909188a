"""Device facts and measured energy from fake sysfs trees and a fake `vcgencmd` (this machine has neither a Pi's
firmware tool nor readable RAPL counters, so each sensor path is driven by files the test writes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from edgepack.device_bench import runner as device_probe  # the probe lives in the runner: one file ships

from tests.device_bench.helpers import run_shipped_runner

PMIC_OUTPUT = """\
     3V7_WL_SW_A current(0)=0.10000000A
    VDD_CORE_A current(7)=2.00000000A
    EXT5V_V volt(24)=5.10000000V
     3V7_WL_SW_V volt(8)=3.70000000V
    VDD_CORE_V volt(15)=0.80000000V
"""
PMIC_WATTS = 0.1 * 3.7 + 2.0 * 0.8  # EXT5V has a voltage but no current: not a rail with power


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def no_vcgencmd(tmp_path, monkeypatch):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def fake_vcgencmd(tmp_path, monkeypatch):
    """A `vcgencmd` answering get_throttled (under-voltage now, throttled since boot) and pmic_read_adc."""
    bin_dir = tmp_path / "pi_bin"
    bin_dir.mkdir()
    script = bin_dir / "vcgencmd"
    outputs = {"get_throttled": "throttled=0x40001\n", "pmic_read_adc": PMIC_OUTPUT}
    script.write_text(f"#!{sys.executable}\nimport sys\nprint({outputs!r}[sys.argv[1]], end='')\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def rapl_tree(root: Path, energy_uj: int, max_range: int = 262143328850) -> Path:
    package = "class/powercap/intel-rapl:0"
    write(root, f"{package}/name", "package-0\n")
    write(root, f"{package}/energy_uj", f"{energy_uj}\n")
    write(root, f"{package}/max_energy_range_uj", f"{max_range}\n")
    # A sub-domain (part of the package) and psys (the whole platform) must not be added to it.
    write(root, f"{package}/intel-rapl:0:0/name", "core\n")
    write(root, f"{package}/intel-rapl:0:0/energy_uj", "5\n")
    write(root, "class/powercap/intel-rapl:1/name", "psys\n")
    write(root, "class/powercap/intel-rapl:1/energy_uj", "7\n")
    return root / package / "energy_uj"


def test_rapl_energy_is_the_package_counters_increase(tmp_path, no_vcgencmd):
    counter = rapl_tree(tmp_path, energy_uj=1_000_000)
    meter = device_probe.start_energy_meter(str(tmp_path))
    counter.write_text("3500000\n")  # 2.5 J during the timed runs
    measured = meter.stop(seconds=2.0, runs=100)
    assert measured["method"] == "rapl" and measured["joules"] == 2.5
    assert measured["uj_per_inference"] == 25_000 and measured["average_watts"] == 1.25


def test_a_rapl_counter_that_wrapped_around_still_gives_the_increase(tmp_path, no_vcgencmd):
    counter = rapl_tree(tmp_path, energy_uj=999_900, max_range=1_000_000)
    meter = device_probe.start_energy_meter(str(tmp_path))
    counter.write_text("400\n")  # 100 uJ to the wrap, then 400 more
    assert meter.stop(seconds=1.0, runs=1)["joules"] == pytest.approx(500e-6)


def test_without_any_sensor_the_record_says_no_sensor_and_gives_no_figure(tmp_path, no_vcgencmd):
    measured = device_probe.start_energy_meter(str(tmp_path)).stop(seconds=1.0, runs=10)
    assert measured["method"] == "no sensor" and measured["uj_per_inference"] is None
    assert any("intel-rapl" in place for place in measured["looked_for"])


def test_an_ina219_on_hwmon_is_sampled(tmp_path, no_vcgencmd):
    write(tmp_path, "class/hwmon/hwmon0/name", "cpu_thermal\n")
    write(tmp_path, "class/hwmon/hwmon1/name", "ina219\n")
    write(tmp_path, "class/hwmon/hwmon1/power1_input", "2500000\n")  # microwatts
    measured = device_probe.start_energy_meter(str(tmp_path)).stop(seconds=2.0, runs=10)
    assert measured["method"] == "hwmon ina" and measured["average_watts"] == 2.5
    assert measured["joules"] == 5.0 and measured["uj_per_inference"] == 500_000 and measured["samples"] >= 1


def test_a_pi5_pmic_is_read_through_vcgencmd(tmp_path, fake_vcgencmd):
    assert device_probe.pmic_watts(PMIC_OUTPUT) == pytest.approx(PMIC_WATTS)
    measured = device_probe.start_energy_meter(str(tmp_path)).stop(seconds=1.0, runs=4)
    assert measured["method"] == "pi5 pmic" and measured["average_watts"] == pytest.approx(PMIC_WATTS, abs=1e-4)


def test_pi_throttling_flags_are_decoded(fake_vcgencmd):
    throttled = device_probe.throttling()
    assert throttled["raw"] == "0x40001" and throttled["under_voltage"] and throttled["throttled_occurred"]
    assert not throttled["throttled"] and not throttled["under_voltage_occurred"]


def test_facts_come_from_sysfs_and_are_none_where_unreadable(tmp_path, no_vcgencmd):
    write(tmp_path, "devices/system/cpu/cpu0/cpufreq/scaling_governor", "ondemand\n")
    write(tmp_path, "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1800000\n")  # kHz
    write(tmp_path, "class/thermal/thermal_zone0/temp", "48500\n")  # millidegrees
    write(tmp_path, "class/thermal/thermal_zone1/temp", "51234\n")
    facts = device_probe.device_facts(str(tmp_path), temperature_at_start=40.0)
    assert facts == {
        "governor": "ondemand",
        "cpu_mhz": 1800.0,
        "temperature_c_start": 40.0,
        "temperature_c": 51.2,  # the hottest zone
        "throttled": None,  # no vcgencmd: not a Pi
    }
    empty = device_probe.device_facts(str(tmp_path / "nothing"), temperature_at_start=None)
    assert set(empty.values()) == {None}


def test_the_shipped_runner_reports_the_device_and_its_energy(tmp_path, onnx_model, fake_vcgencmd):
    sys_root = tmp_path / "sys"
    write(sys_root, "devices/system/cpu/cpu0/cpufreq/scaling_governor", "performance\n")
    write(sys_root, "class/thermal/thermal_zone0/temp", "45000\n")
    arguments = [str(onnx_model), "--runs", "3", "--min-seconds", "0.2", "--sys-root", str(sys_root)]
    folder = tmp_path / "device"
    folder.mkdir()
    record, exit_code, _ = run_shipped_runner(folder, arguments, blocked=[], env=dict(os.environ))
    assert exit_code == 0, record
    assert (record["governor"], record["temperature_c"], record["throttled"]["raw"]) == ("performance", 45.0, "0x40001")
    measured = record["energy"]["measured"]
    assert measured["method"] == "pi5 pmic" and measured["average_watts"] == pytest.approx(PMIC_WATTS, abs=1e-4)
    assert measured["uj_per_inference"] == pytest.approx(
        PMIC_WATTS * record["elapsed_seconds"] / record["runs"] * 1e6, rel=1e-3
    )
