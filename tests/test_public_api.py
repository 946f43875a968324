"""The curated top-level API: every exported name resolves, and importing the package stays light."""

import subprocess
import sys

import pytest

import lightning_medaug


@pytest.mark.parametrize("name", lightning_medaug.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(lightning_medaug, name) is not None
    assert name in dir(lightning_medaug)


def test_all_lists_exactly_the_lazy_exports():
    assert set(lightning_medaug.__all__) == {"__version__", *lightning_medaug._EXPORTS}
    assert len(lightning_medaug.__all__) == len(set(lightning_medaug.__all__))


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'SyntheticMixer'"):
        lightning_medaug.SyntheticMixer  # noqa: B018


def test_import_does_not_load_heavy_dependencies():
    code = ("import sys, lightning_medaug; heavy = [m for m in ('diffusers', 'monai', 'timm', 'torch') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                         errors="replace", check=True, timeout=120)
    assert out.stdout.strip() == ""


def test_exported_generator_factory_builds_a_registered_family():
    model = lightning_medaug.create_generator("vae", image_size=16, channels=(8, 16), latent_channels=2,
                                              norm_num_groups=8)
    assert isinstance(model, lightning_medaug.GenerativeModule)
    assert "ddpm" in lightning_medaug.list_generators()
