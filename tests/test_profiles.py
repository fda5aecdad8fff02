"""`scnas profiles install`: `snakemake --profile local` and `--profile slurm` work by name afterwards."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, cli_env

from scnas.errors import ScnasError
from scnas.profiles import install_profiles, project_profiles, user_profile_folder

# A workflow that only records the config Snakemake hands it: what the profile put there.
RECORDING_SNAKEFILE = """\
import json

with open("config-seen.json", "w") as f:
    json.dump(config, f)


rule all:
    run:
        pass
"""


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    """An environment whose HOME and XDG_CONFIG_HOME are empty folders of this test."""
    (tmp_path / "home").mkdir()
    return cli_env(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))


def snakemake_config(profile: str, env: dict[str, str], folder: Path) -> subprocess.CompletedProcess:
    """Dry-run the recording workflow in `folder` with `--profile PROFILE`, as a user would type it."""
    folder.mkdir(exist_ok=True)
    (folder / "Snakefile").write_text(RECORDING_SNAKEFILE)
    (folder / "config-seen.json").unlink(missing_ok=True)
    return subprocess.run(
        [str(BIN / "snakemake"), "--profile", profile, "--dry-run", "--cores", "1"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_after_install_both_profiles_resolve_by_name_from_another_folder(tmp_path, home):
    elsewhere = tmp_path / "elsewhere"
    before = snakemake_config("local", home, elsewhere)
    assert before.returncode != 0 and "no profile.yaml (or config.yaml) found" in before.stderr

    installed = subprocess.run(
        [sys.executable, "-m", "scnas", "profiles", "install"], env=home, capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    folder = tmp_path / "xdg" / "snakemake"
    for name in ("local", "slurm"):
        assert (folder / name).is_symlink() and (folder / name).resolve() == REPO / "profiles" / name
        assert f"linked {folder / name} -> {REPO / 'profiles' / name}" in installed.stdout

    local = snakemake_config("local", home, elsewhere)
    assert local.returncode == 0, local.stdout + local.stderr
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    seen = json.loads((elsewhere / "config-seen.json").read_text())
    assert seen["run_tasks"] == demo["run_tasks"] and seen["tasks"].keys() == demo["tasks"].keys()

    slurm = snakemake_config("slurm", home, elsewhere)
    assert slurm.returncode == 0, slurm.stdout + slurm.stderr
    assert json.loads((elsewhere / "config-seen.json").read_text())["launcher"] == {"executor": "slurm"}


def test_the_user_folder_is_where_snakemake_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_profile_folder() == tmp_path / "xdg" / "snakemake"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_profile_folder() == tmp_path / "home" / ".config" / "snakemake"


def test_installing_twice_changes_nothing(tmp_path):
    folder = tmp_path / "snakemake"
    install_profiles(into=folder)
    links = {p.name: p.readlink() for p in folder.iterdir()}
    again = install_profiles(into=folder)
    assert all(line.startswith("already linked: ") for line in again) and len(again) == 2
    assert {p.name: p.readlink() for p in folder.iterdir()} == links


def test_a_different_profile_is_refused_before_any_change_and_replaced_with_force(tmp_path):
    folder = tmp_path / "snakemake"
    (folder / "local").mkdir(parents=True)
    (folder / "local" / "config.yaml").write_text("cores: 8\n")
    (folder / "slurm").symlink_to(tmp_path / "gone")

    with pytest.raises(ScnasError) as refused:
        install_profiles(into=folder)
    message = str(refused.value)
    assert "\n" not in message and "--force" in message
    assert f"{folder / 'local'} (a folder)" in message and "which is missing" in message
    assert sorted(p.name for p in folder.iterdir()) == ["local", "slurm"] and not (folder / "local").is_symlink()

    done = install_profiles(force=True, into=folder)
    assert (folder / "local.bak" / "config.yaml").read_text() == "cores: 8\n"
    for name in ("local", "slurm"):
        assert (folder / name).resolve() == REPO / "profiles" / name
    assert "now " + str(folder / "local.bak") in done[0] and "replacing a link to" in done[1]

    (folder / "local").unlink()
    (folder / "local").mkdir()
    install_profiles(force=True, into=folder)
    assert (folder / "local.bak.1").is_dir() and (folder / "local.bak").is_dir()


def test_profiles_missing_beside_the_package_is_one_line(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "config.yaml").write_text("cores: 1\n")
    with pytest.raises(ScnasError) as missing:
        project_profiles(tmp_path)
    message = str(missing.value)
    assert message.startswith(f"{tmp_path / 'slurm'}: ") and "pip install -e ." in message and "\n" not in message
    assert project_profiles()["slurm"] == REPO / "profiles" / "slurm"


def test_heavy_rules_declare_the_gpus_of_their_stage_as_the_resource_profiles_local_documents(tmp_path):
    """gpu = gpus_per_node * nodes of each stage (a task's overrides included), 0 where a stage asks for none."""
    for task in ("Task01_BrainTumour", "Task02_Heart", "Task06_Lung"):
        (tmp_path / task).mkdir()
        (tmp_path / task / "dataset.json").write_text("{}")
    launcher = tmp_path / "launcher.yaml"
    launcher.write_text(
        yaml.safe_dump(
            {
                "launcher": {"default": {"nodes": 2, "gpus_per_node": 3}, "predict": {"gpus_per_node": 1}},
                "tasks": {"Task02_Heart": {"overrides": {"launcher": {"search": {"gpus_per_node": 0}}}}},
            }
        )
    )
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "2", "--resources", "gpu=6", "--configfiles", "config.yaml"]
        + [str(launcher), "--config", f"data_root={tmp_path}", f"results={tmp_path / 'results'}"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    declared: dict[tuple[str, str], set[int | None]] = {}
    for block in result.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        task = re.search(r"task=(\w+)", block)
        gpu = re.search(r"^\s+resources: .*\bgpu=(\d+)\b", block, re.M)
        declared.setdefault((rule, task.group(1) if task else ""), set()).add(int(gpu.group(1)) if gpu else None)
    assert declared[("search", "Task01_BrainTumour")] == {6} and declared[("search", "Task02_Heart")] == {0}
    assert declared[("train", "Task02_Heart")] == declared[("train", "Task06_Lung")] == {6}
    assert {gpu for (rule, _), gpus in declared.items() if rule == "predict" for gpu in gpus} == {2}
    assert declared[("evaluate", "Task02_Heart")] == {None} and declared[("preprocess", "Task06_Lung")] == {None}
