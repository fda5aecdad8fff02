"""`scnas profiles install`: link the project's Snakemake profiles into Snakemake's user profile folder.

`snakemake --profile NAME` looks for NAME in the current folder, then in that user folder
($XDG_CONFIG_HOME/snakemake, else ~/.config/snakemake on Linux), then the site folder; a link there
makes `--profile local` and `--profile slurm` work as typed and follow the checkout's edits.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping

from scnas.errors import ScnasError

PROFILE_NAMES = ("local", "slurm")
BACKUP_SUFFIX = ".bak"


def project_profiles(folder: Path | None = None) -> dict[str, Path]:
    """name -> profile folder of the project: `folder`, by default profiles/ of the checkout this package
    is installed from (`pip install -e .`); one line when a profile is missing there."""
    base = folder if folder is not None else Path(__file__).resolve().parent.parent / "profiles"
    for name in PROFILE_NAMES:
        if not (base / name / "config.yaml").is_file():
            raise ScnasError(
                f"{base / name}: no Snakemake profile here (config.yaml); `scnas profiles install` needs the "
                "repository checkout, installed with `pip install -e .` from it"
            )
    return {name: (base / name).resolve() for name in PROFILE_NAMES}


def user_profile_folder() -> Path:
    """The user profile folder Snakemake searches, computed as Snakemake does (platformdirs)."""
    try:
        from platformdirs import user_config_dir
    except ImportError:  # Snakemake lives in another environment: its rule on Linux
        return Path(os.environ.get("XDG_CONFIG_HOME", "").strip() or Path.home() / ".config") / "snakemake"
    return Path(user_config_dir("snakemake", "snakemake"))


def install_profiles(
    force: bool = False, profiles: Mapping[str, Path] | None = None, into: Path | None = None
) -> list[str]:
    """Link each profile (default: the project's) into `into` (default: the user profile folder); returns
    what was done, a line per profile. A different profile already there is refused, all before any change,
    unless `force`: a link or file is then replaced, a folder moved to NAME.bak (or NAME.bak.N)."""
    sources = dict(profiles) if profiles is not None else project_profiles()
    folder = into if into is not None else user_profile_folder()
    conflicts = [
        f"{folder / name} ({_describe(folder / name)})"
        for name, target in sources.items()
        if _occupied(folder / name) and not _links_to(folder / name, target)
    ]
    if conflicts and not force:
        raise ScnasError(
            f"{'; '.join(conflicts)}: another Snakemake profile of that name is installed; "
            "`scnas profiles install --force` replaces it (a folder is kept as NAME.bak)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScnasError(f"{folder}: cannot create Snakemake's profile folder: {e.strerror}") from None
    return [_install(folder / name, Path(target).resolve()) for name, target in sources.items()]


def _install(link: Path, target: Path) -> str:
    if _links_to(link, target):
        return f"already linked: {link} -> {target}"
    kept = ""
    if link.is_dir() and not link.is_symlink():
        backup = _free_name(link)
        link.rename(backup)
        kept = f" (the folder that was there is now {backup})"
    elif _occupied(link):
        kept = f" (replacing {_describe(link)})"
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, tmp, target_is_directory=True)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"linked {link} -> {target}{kept}"


def _occupied(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _links_to(link: Path, target: Path) -> bool:
    return link.exists() and link.resolve() == Path(target).resolve()


def _describe(path: Path) -> str:
    if path.is_symlink():
        return f"a link to {os.readlink(path)}" + ("" if path.exists() else ", which is missing")
    return "a folder" if path.is_dir() else "a file"


def _free_name(path: Path) -> Path:
    candidate = path.with_name(path.name + BACKUP_SUFFIX)
    index = 1
    while _occupied(candidate):
        candidate = path.with_name(f"{path.name}{BACKUP_SUFFIX}.{index}")
        index += 1
    return candidate
