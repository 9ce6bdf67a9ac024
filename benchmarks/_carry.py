"""What travels to the GPU machine and what it installs there (issue 24); stdlib only, any Python >= 3.8.

    python benchmarks/_carry.py pins SECTION             # name==version of a [section] of gpu_carry.txt
    python benchmarks/_carry.py check DIR                # DIR holds every pin, one version each, fits
    python benchmarks/_carry.py select DIR               # the wheels of DIR this interpreter lacks
    python benchmarks/_carry.py standin PIN_FILE [worst] # what to uninstall / install to match the pins
    python benchmarks/_carry.py editable REPO            # exit 0 when lzn is installed editable from REPO

``check`` is run by ``gpu_carry.sh`` after downloading and by ``gpu_install.sh`` before
installing (two versions of one wheel stop a ``pip install`` of the whole folder). ``select``
runs under the interpreter that will hold the packages: a carried wheel is installed where the
distribution is missing or older than the carried one, never over a newer one (the image's
other packages were built against what it holds).
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "benchmarks" / "gpu_carry.txt"
LIMIT = 64 * 2**20  # the device tool's limit on the working tree and the carried paths together


def norm(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_key(v: str):  # noqa: ANN202 - packaging's Version, or the vendored one in pip
    try:
        from packaging.version import Version
    except ImportError:  # pragma: no cover - the image has packaging; pip always vendors it
        from pip._vendor.packaging.version import Version
    return Version(v)


def pins(section: str) -> list[tuple[str, str]]:
    """``(name, version)`` of one ``[section]`` of gpu_carry.txt."""
    out, current = [], None
    for raw in PINS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            name, _, version = line.partition("==")
            out.append((name.strip(), version.strip()))
    if not out:
        raise SystemExit(f"_carry: no [{section}] pins in {PINS}")
    return out


def artifact(path: Path) -> tuple[str, str] | None:
    """``(normalised name, version)`` of a wheel or sdist file name."""
    if path.name.endswith(".whl"):
        name, version = path.name.split("-")[:2]
        return norm(name), version
    m = re.match(r"(.+?)-(\d[^-]*)\.tar\.gz$", path.name)
    return (norm(m.group(1)), m.group(2)) if m else None


def check(folder: Path) -> int:
    files = sorted(folder.glob("*.whl")) + sorted((folder / "build").glob("*.whl"))
    files += sorted(folder.glob("*.tar.gz"))
    seen: dict[str, list[str]] = {}
    for f in files:
        got = artifact(f)
        if got:
            seen.setdefault(got[0], []).append(got[1])
    problems = [f"{n}: {', '.join(v)}" for n, v in seen.items() if len(v) > 1]
    if problems:
        print(
            f"_carry: {folder} holds several versions of {'; '.join(problems)} (pip stops on that): "
            "run bash benchmarks/gpu_carry.sh, which empties the folder before filling it",
            file=sys.stderr,
        )
        return 1
    wanted = [(s, n, v) for s in ("wheels", "build", "source") for n, v in pins(s)]
    missing = [f"{n}=={v} ({s})" for s, n, v in wanted if seen.get(norm(n)) != [v]]
    if missing:
        print(
            f"_carry: {folder} lacks {', '.join(missing)}: run bash benchmarks/gpu_carry.sh", file=sys.stderr
        )
        return 1
    carried = sum(f.stat().st_size for f in files)
    tree = _tree_bytes()
    print(
        f"_carry: {folder}: {len(files)} files, {carried / 2**20:.1f} MiB; with the working tree "
        f"({tree / 2**20:.1f} MiB) {(carried + tree) / 2**20:.1f} MiB of the device tool's 64 MiB"
    )
    if carried + tree > LIMIT:
        print("_carry: over the device tool's 64 MiB: carry less", file=sys.stderr)
        return 1
    return 0


def _tree_bytes() -> int:
    """Bytes of what the device tool sends besides the carry: tracked and untracked, not ignored files."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0  # not a git checkout (the device's copy): nothing to add
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def select(folder: Path) -> int:
    for f in sorted(folder.glob("*.whl")):
        name, version = artifact(f)  # type: ignore[misc]
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or _version_key(have) < _version_key(version):
            print(f)
    return 0


def standin(pin_file: Path, worst: bool) -> int:
    """Lines ``uninstall NAME`` / ``install NAME==VERSION`` that bring this interpreter to the pins."""
    want: dict[str, str] = {}
    text = pin_file.read_text()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            want[norm(name)] = f"{name}=={version}"
    if worst:
        m = re.search(r"^# WORST:(.*)$", text, re.M)
        if not m:
            raise SystemExit(f"_carry: {pin_file} has no '# WORST:' line")
        for pin in m.group(1).split():
            want[norm(pin.split("==")[0])] = pin
    have = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name in sorted(set(have) - set(want)):
        print(f"uninstall {name}")
    for name, pin in sorted(want.items()):
        if have.get(name) != pin.split("==")[1]:
            print(f"install {pin}")
    return 0


def editable(repo: Path) -> int:
    """0 when this interpreter has the distribution ``lzn`` installed editable from ``repo``, else 1.

    Read from the distribution's ``direct_url.json`` (PEP 610), not by importing ``lzn_core``:
    run from the checkout's root, ``import lzn_core`` succeeds through the current directory
    whether or not anything is installed (issue 24's first finding). Run it outside the checkout.
    """
    import json

    try:
        text = metadata.distribution("lzn").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return 1
    url = json.loads(text or "{}")
    same = url.get("url") == repo.resolve().as_uri()
    return 0 if same and url.get("dir_info", {}).get("editable") else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "pins":
        print("\n".join(f"{n}=={v}" for n, v in pins(argv[1])))
        return 0
    if len(argv) == 2 and argv[0] in ("check", "select"):
        return (check if argv[0] == "check" else select)(Path(argv[1]))
    if len(argv) == 2 and argv[0] == "editable":
        return editable(Path(argv[1]))
    if len(argv) in (2, 3) and argv[0] == "standin":
        return standin(Path(argv[1]), argv[2:] == ["worst"])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
