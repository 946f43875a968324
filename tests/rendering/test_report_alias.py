"""``lightning_medaug.report``, the old name of ``lightning_medaug.rendering``, still imports, with a FutureWarning."""

import subprocess
import sys


def test_the_old_package_name_warns_and_gives_the_same_objects():
    code = ("import warnings; warnings.simplefilter('error', FutureWarning)\n"
            "try:\n    import lightning_medaug.report\nexcept FutureWarning as w:\n    print('warned:', w)\n"
            "warnings.simplefilter('ignore')\n"
            "import lightning_medaug.report.grid as old, lightning_medaug.rendering.grid as new\n"
            "from lightning_medaug.report import save_image_grid\n"
            "print(old is new, save_image_grid is new.save_image_grid)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warned: lightning_medaug.report is deprecated: import lightning_medaug.rendering" in done.stdout
    assert done.stdout.strip().endswith("True True")
