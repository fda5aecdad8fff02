"""The quick form of `make bench`: tiny sizes, outputs checked against the peers (nnU-Net v2,
batchgeneratorsv2, MONAI, SimpleITK; the test extra installs them), never timings."""

from __future__ import annotations

import json

import pytest

from benchmarks import peers, run
from benchmarks.suite import augmentation, resampling, sliding_window, training_step
from benchmarks.timing import Options, Section, time_interleaved

QUICK = Options(quick=True, repeats=1, warmup=0)


def needs(*packages: str):
    reason = peers.missing(*packages)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def _failures(section: Section) -> str:
    return "; ".join(f"{c.what}: {c.value} (needs {c.tolerance})" for c in section.checks if not c.ok)


@needs("nnunetv2")
def test_resampling_agrees_with_nnunet_and_simpleitk_and_order_3_is_closer_to_the_analytic_image():
    section = resampling.run(QUICK)
    assert section.checks and section.agrees, _failures(section)
    rms = {m["what"].split(": ", 1)[1]: m["rms_error"] for m in section.measurements if "rms_error" in m}
    assert rms["ours (trilinear)"] == pytest.approx(rms["nnU-Net order 1"], rel=1e-4)
    assert rms["nnU-Net order 3 (its default)"] < 0.5 * rms["ours (trilinear)"]
    assert 0 < rms["ours (trilinear)"] < 0.05


@needs("nnunetv2", "batchgeneratorsv2")
def test_augmentation_matches_batchgeneratorsv2_transform_by_transform():
    section = Section("augmentation", "")
    augmentation.agreement(section)
    assert len(section.checks) >= 8 and section.agrees, _failures(section)


@needs("monai")
def test_sliding_window_equals_monai_with_the_same_weights():
    section = sliding_window.run(QUICK)
    assert section.agrees, _failures(section)
    assert {t.peer for t in section.timings} == {"MONAI sliding_window_inference"}


@needs("nnunetv2")
def test_training_step_networks_are_flops_matched_and_train():
    section = training_step.run(QUICK)
    assert section.agrees, _failures(section)
    widths = {m["what"].split(": ", 1)[1]: m["width"] for m in section.measurements}
    assert set(widths) == {"U-ResNet", "searched network", training_step.REDUCED, "PlainConvUNet"}


def test_plain_conv_unet_is_laid_out_as_nnunet_plans_the_hippocampus():
    pytest.importorskip("dynamic_network_architectures")
    net = peers.plain_conv_unet(1, 3, 32, (40, 56, 40))
    convs = [m for m in net.encoder.modules() if type(m).__name__ == "Conv3d"]
    assert [c.out_channels for c in convs[::2]] == [32, 64, 128, 256]  # nnU-Net's plan for Task04: 4 stages
    assert [c.stride for c in convs[::2]] == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]


def test_interleaved_timing_rotates_the_order_after_the_warmup():
    calls: list[str] = []
    times = time_interleaved({k: (lambda k=k: calls.append(k)) for k in "abc"}, repeats=3, warmup=1)
    assert calls == [*"abc", *"abc", *"bca", *"cab"]  # warm-up, then each repeat rotated by one
    assert set(times) == set("abc") and all(len(v["runs_s"]) == 3 for v in times.values())


def test_results_page_names_the_machine_and_keeps_cells_whole():
    info = {"cpu": "AMD EPYC 7B13", "cpu_count": 2, "torch": "2.13.0+cpu", "python": "3.11.7", "date": "d"}
    section = Section("demo", "Demo")
    section.check("max |a - b|", 0.5, "<= 1", True)
    page = run.markdown([section.to_dict()], info, quick=False)
    assert "AMD EPYC 7B13, 2 CPUs, torch 2.13.0+cpu" in page
    assert "| demo | max \\|a - b\\| | 0.5 | <= 1 | yes |" in page
    assert run.machine_name(info) == "amd-epyc-7b13-2cpu-torch2.13.0-cpu"


@needs("nnunetv2")
def test_run_writes_results_and_merges_sections_of_later_runs(tmp_path, monkeypatch):
    def fake(name, ok):
        def bench(opts):
            section = Section(name, name)
            section.check("c", 1.0, "t", ok)
            return section

        return bench

    monkeypatch.setitem(run.BENCHMARKS, "training_step", fake("training_step", True))
    monkeypatch.setitem(run.BENCHMARKS, "sliding_window", fake("sliding_window", False))
    monkeypatch.setitem(run.BENCHMARKS, "search_step", lambda opts: 1 / 0)
    assert run.main(["--quick", "--only", "resampling", "training_step", "--out", str(tmp_path)]) == 0
    assert run.main(["--quick", "--only", "sliding_window", "search_step", "--out", str(tmp_path)]) == 1
    (page,) = tmp_path.glob("*-quick.md")
    result = json.loads(page.with_suffix(".json").read_text())
    names = ["resampling", "sliding_window", "training_step", "search_step"]
    assert [s["name"] for s in result["sections"]] == names
    assert [s["agrees"] for s in result["sections"]] == [True, False, True, False]
    assert "**NO**" in page.read_text() and "ZeroDivisionError" in page.read_text()
