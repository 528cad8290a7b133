"""torchvision must import on CPU-only torch, also in processes that import it before genkd (the accelerate CLI)."""
import subprocess
import sys

import pytest

from genkd import _torchvision_compat


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_torchvision_imports_after_genkd():
    result = run_python("import genkd, torchvision; from torchvision.transforms import v2; print(v2.RandAugment)")
    assert result.returncode == 0, result.stderr[-2000:]


def test_startup_hook_file_makes_a_plain_torchvision_import_work(tmp_path):
    if _torchvision_compat.ops_library_loads():
        pytest.skip("torchvision's compiled ops load with this torch (a matching CUDA or CPU build): no hook needed")
    _torchvision_compat.install_startup_hook(tmp_path)
    hook_line = (tmp_path / _torchvision_compat.PTH_FILE).read_text().strip()
    assert hook_line.startswith("import genkd._torchvision_compat")
    # What site.py does with the .pth line at interpreter start, then a third-party import of torchvision (timm's).
    result = run_python(f"{hook_line}\nimport sys; assert 'torch' not in sys.modules\nimport timm, torchvision")
    assert result.returncode == 0, result.stderr[-2000:]
