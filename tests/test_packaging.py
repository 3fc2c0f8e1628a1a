"""The wheel ships kernels/ as minigrad.kernels, and the runtime finds the kernels
both in an installed wheel and in a checkout. README and .ci/run agree on the test command."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SKIP_DIRS = {"__pycache__", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".cubin", ".ptx", ".fatbin", ".o", ".so", ".tmp"}


def _source_files(folder: Path):
    """Files under `folder` (relative posix paths), without build outputs and caches."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for f in filenames:
            p = Path(dirpath, f)
            if f.startswith(".") or p.suffix in _SKIP_SUFFIXES:
                continue
            out.append(p.relative_to(folder).as_posix())
    return sorted(out)


def _ignore(_dir, names):
    return [n for n in names if n in _SKIP_DIRS or Path(n).suffix in _SKIP_SUFFIXES]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build a wheel from a clean copy of the source tree (no stale build/ folder can leak
    into it) without build isolation, so that no network is needed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for name in ("minigrad", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=_ignore)
    dist = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, ("wheel build failed (is the dev extra installed?):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    wheels = list(dist.glob("minigrad-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_kernels_folder_is_not_empty():
    assert _source_files(ROOT / "kernels"), "kernels/ has no files to ship"


def test_wheel_contains_every_kernel_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in _source_files(ROOT / "kernels") if f"minigrad/kernels/{f}" not in names]
    assert not missing, (f"kernel files missing from {wheel.name}: {missing} "
                         "(extend [tool.setuptools.package-data] in pyproject.toml)")


def test_wheel_contains_every_python_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in _source_files(ROOT / "minigrad")
               if f.endswith(".py") and f"minigrad/{f}" not in names]
    assert not missing, (f"modules missing from {wheel.name}: {missing} "
                         "(does every package folder have an __init__.py?)")


def test_installed_wheel_finds_kernels(wheel, tmp_path):
    """Unpack the wheel as an install would and read every kernel through
    minigrad.kernelfiles, with the checkout off sys.path."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import json, minigrad, minigrad.kernelfiles as k\n"
        "print(json.dumps({'init': minigrad.__file__, 'dir': str(k.kernel_dir()),\n"
        "                  'src': {n: k.kernel_source(n) for n in k.kernel_names()}}))\n")
    env = dict(os.environ, PYTHONPATH=str(site), MINIGRAD_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["init"]).resolve().is_relative_to(site.resolve()), got["init"]
    assert Path(got["dir"]).resolve() == (site / "minigrad" / "kernels").resolve()
    want = {f: (ROOT / "kernels" / f).read_text(encoding="utf-8")
            for f in _source_files(ROOT / "kernels") if f.endswith((".cu", ".cuh", ".h"))
            and "/" not in f}
    assert got["src"] == want


def test_checkout_finds_kernels():
    from minigrad import kernelfiles
    files = [f for f in _source_files(ROOT / "kernels")
             if f.endswith((".cu", ".cuh", ".h")) and "/" not in f]
    assert kernelfiles.kernel_names() == files
    for f in files:
        assert kernelfiles.kernel_source(f) == (ROOT / "kernels" / f).read_text(encoding="utf-8")
    stem = next((f for f in files if f.endswith(".cu")), None)
    if stem:   # a bare name means the .cu file
        assert kernelfiles.kernel_source(stem[:-3]) == kernelfiles.kernel_source(stem)


def test_kernel_source_errors():
    from minigrad import kernelfiles
    with pytest.raises(FileNotFoundError, match="no_such_kernel.cu.*available"):
        kernelfiles.kernel_source("no_such_kernel")
    for bad in ("../setup.py", "a/b.cu", "", ".hidden.cu"):
        with pytest.raises(ValueError, match="not a kernel file name"):
            kernelfiles.kernel_source(bad)


def _readme_test_command():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cmds = re.findall(r"&& (python -m pytest[^\n`]*)", text)
    assert cmds, "README.md has no `... && python -m pytest ...` quick-start command"
    assert len(set(cmds)) == 1, f"README.md gives different test commands: {cmds}"
    return cmds[0].strip()


def test_ci_runs_the_readme_test_command():
    cmd = _readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runs = [line.strip() for line in ci.splitlines()
            if "python -m pytest" in line and not line.strip().startswith("#")]
    assert runs and all(cmd in line for line in runs), (
        f".ci/run must run the README's test command {cmd!r}; it runs {runs}")
    assert os.access(ROOT / ".ci" / "run", os.X_OK), ".ci/run is not executable"
