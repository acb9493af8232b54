"""cuCIM's cuFile side effects: no ``cufile.log`` in the current folder, no GPU noise on a CPU terminal.

cuFile initializes when ``libcufile.so.0`` can be loaded: after ``import torch`` (see
tests/infer/test_infer_quiet.py) or, as in CUDA container images, from ``LD_LIBRARY_PATH``, which
is how the command-line test here makes ``tupac info`` meet it without torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tupac.slide import quiet

CMU = "cmu-1-small-region.svs"


def libcufile_dir() -> Path | None:
    """The folder of the pip-installed ``libcufile.so.0`` (nvidia-cufile wheel), if any."""
    found = sorted(Path(sysconfig.get_paths()["purelib"]).glob("nvidia/**/libcufile.so.0"))
    return found[0].parent if found else None


@pytest.fixture
def cufile_env(tmp_path) -> dict[str, str]:
    """An environment where cuCIM initializes cuFile, a fresh probe cache (so the probe child runs
    too) and no cuFile variable from the caller."""
    lib = libcufile_dir()
    if lib is None:
        pytest.skip("no libcufile.so.0 installed: cuCIM never initializes cuFile here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUFILE_")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH")) if p)
    env["TUPAC_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def run_in(cwd: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cwd.mkdir()
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_tupac_info_with_cucim_leaves_no_cufile_log_and_no_gpu_noise(tmp_path, real_dir, cufile_env):
    pytest.importorskip("cucim")
    slide = str(real_dir / CMU)
    # Control: plain cuCIM in the same environment shows the problem this guards against.
    plain = run_in(tmp_path / "plain", ["-c", "import sys; from cucim import CuImage; CuImage(sys.argv[1])", slide],
                   cufile_env)
    assert plain.returncode == 0, plain.stderr
    assert (tmp_path / "plain" / "cufile.log").exists()
    if not quiet.cuda_driver_present():
        assert "dlopen error libcuda.so.1" in plain.stdout

    proc = run_in(tmp_path / "work", ["-m", "tupac", "info", slide, "--backend", "cucim"], cufile_env)
    assert proc.returncode == 0, proc.stderr
    assert "cucim (requested)" in proc.stdout
    assert os.listdir(tmp_path / "work") == []
    if not quiet.cuda_driver_present():
        lines = (proc.stdout + proc.stderr).splitlines()
        assert [ln for ln in lines if "libcuda" in ln or "cufile" in ln.lower() or quiet.is_no_driver_noise(ln)] == []


# --- the pieces ------------------------------------------------------------------------------


@pytest.fixture
def no_cufile_var(monkeypatch):
    """No CUFILE_LOGFILE_PATH and no value remembered as tupac's; both restored afterwards."""
    monkeypatch.delenv(quiet.CUFILE_LOG_VAR, raising=False)
    monkeypatch.setattr(quiet, "_ours", None)


def test_route_sets_an_absolute_path_and_a_later_run_folder_replaces_it(no_cufile_var, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert quiet.route_cufile_log(Path("RUN") / "logs") == {quiet.CUFILE_LOG_VAR: str(tmp_path / "RUN/logs/cufile.log")}
    assert os.environ[quiet.CUFILE_LOG_VAR] == str(tmp_path / "RUN/logs/cufile.log")
    assert not (tmp_path / "RUN").exists()  # made only when cuCIM is about to write there
    assert quiet.route_cufile_log(None) == {quiet.CUFILE_LOG_VAR: os.devnull}
    assert os.environ[quiet.CUFILE_LOG_VAR] == os.devnull


def test_route_keeps_the_users_choice(no_cufile_var, monkeypatch, tmp_path):
    monkeypatch.setenv(quiet.CUFILE_LOG_VAR, "/somewhere/mine.log")
    assert quiet.route_cufile_log(tmp_path) == {}
    assert os.environ[quiet.CUFILE_LOG_VAR] == "/somewhere/mine.log"


def test_prepare_defaults_to_nowhere_and_makes_the_chosen_folder(no_cufile_var, tmp_path):
    quiet.prepare_cufile_log()
    assert os.environ[quiet.CUFILE_LOG_VAR] == os.devnull
    quiet.route_cufile_log(tmp_path / "RUN" / "logs")
    quiet.prepare_cufile_log()
    assert (tmp_path / "RUN" / "logs").is_dir()


def _write_in_window(driver: bool, monkeypatch) -> None:
    monkeypatch.setattr(quiet, "cuda_driver_present", lambda: driver)
    with quiet.native_noise_filtered():
        os.write(1, b"dlopen error libcuda.so.1: cannot open shared object file: No such file or directory\n")
        os.write(1, b" missing cuda symbols while dynamic loading\n kept on stdout\n")
        os.write(2, b" cuFile initialization failed\nTIFFReadDirectory: a real warning\n")


def test_window_drops_only_the_no_driver_lines(capfd, monkeypatch):
    _write_in_window(False, monkeypatch)
    out, err = capfd.readouterr()
    assert out == " kept on stdout\n"
    assert err == "TIFFReadDirectory: a real warning\n"


def test_window_passes_everything_where_a_driver_loads(capfd, monkeypatch):
    _write_in_window(True, monkeypatch)
    out, err = capfd.readouterr()
    assert "dlopen error libcuda.so.1" in out and "missing cuda symbols" in out
    assert "cuFile initialization failed" in err


def test_window_restores_the_descriptors_when_the_body_raises(capfd, monkeypatch):
    monkeypatch.setattr(quiet, "cuda_driver_present", lambda: False)
    with pytest.raises(ValueError), quiet.native_noise_filtered():
        os.write(2, b"said before failing\n")
        raise ValueError
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert (out, err) == ("after\n", "said before failing\n")
