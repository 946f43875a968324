"""The registries: decorators, lookups with helpful errors, and third-party entry points."""

import sys
import textwrap

import pytest

from lightning_medaug.registry import GENERATORS, Registry


def test_register_create_list():
    reg = Registry("widget")

    @reg.register("small_widget")
    class SmallWidget:
        def __init__(self, size: int = 1):
            self.size = size

    assert reg.list() == ["small_widget"]
    assert reg.list("small*") == ["small_widget"] and reg.list("big*") == []
    assert reg.create("small_widget", size=3).size == 3
    assert SmallWidget.registry_name == "small_widget"
    assert reg.name_of(SmallWidget(2)) == "small_widget"
    assert "small_widget" in reg


def test_unknown_name_suggests_close_matches():
    reg = Registry("widget")
    reg.register("conditional_gan")(type("A", (), {}))
    with pytest.raises(ValueError, match=r"unknown widget 'conditional_gam'.*Did you mean 'conditional_gan'"):
        reg.get("conditional_gam")


def test_conflicting_registration_and_bad_names_are_refused():
    reg = Registry("widget")
    reg.register("w")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("w")(type("B", (), {}))
    with pytest.raises(ValueError, match="invalid widget name"):
        reg.register("has space")


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    # A third-party package, installed the way pip would: a module plus a dist-info entry point.
    (tmp_path / "medaug_plugin_demo.py").write_text(textwrap.dedent("""
        class ThirdPartyGenerator:
            def __init__(self, spatial_dims=2):
                self.spatial_dims = spatial_dims
    """))
    dist = tmp_path / "medaug_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: medaug-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[lightning_medaug.generators]\nthird_party = medaug_plugin_demo:ThirdPartyGenerator\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("generator", entry_point_group="lightning_medaug.generators")
    assert "third_party" in reg.list()
    assert reg.create("third_party", spatial_dims=3).spatial_dims == 3
    sys.modules.pop("medaug_plugin_demo", None)


def test_builtin_generators_are_registered():
    names = GENERATORS.list()
    for expected in ("vae", "cvae", "beta_vae", "vqvae", "dcgan", "cgan", "wgan_gp", "pix2pix", "cyclegan", "ddpm",
                     "ldm"):
        assert expected in names, f"{expected} missing from {names}"


def test_every_module_of_the_builtin_package_registers_without_an_import_list(tmp_path, monkeypatch):
    # A family package whose __init__ imports nothing: dropping a new file in is enough.
    package = tmp_path / "medaug_families_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    reg_module = "from lightning_medaug.registry import Registry\nREG = Registry('family', 'medaug_families_demo')\n"
    (tmp_path / "medaug_families_reg.py").write_text(reg_module)
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(textwrap.dedent(f"""
            from medaug_families_reg import REG

            @REG.register("{name}")
            class Family:
                pass
        """))
    (package / "_private.py").write_text("raise RuntimeError('private modules are not imported')")
    monkeypatch.syspath_prepend(str(tmp_path))
    from medaug_families_reg import REG

    assert REG.list() == ["alpha", "beta"]
    for module in ("medaug_families_reg", "medaug_families_demo", "medaug_families_demo.alpha",
                   "medaug_families_demo.beta"):
        sys.modules.pop(module, None)


def test_a_family_with_a_missing_dependency_leaves_the_others_loaded(tmp_path, monkeypatch):
    package = tmp_path / "medaug_partial_families"
    package.mkdir()
    (package / "__init__.py").write_text("from lightning_medaug.registry import Registry\nREG = Registry('widget')\n")
    (package / "a_broken.py").write_text("import medaug_no_such_dependency\n")
    (package / "b_fine.py").write_text(textwrap.dedent("""
        from medaug_partial_families import REG

        @REG.register("fine")
        class Fine:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from medaug_partial_families import REG

    REG._builtin_module = "medaug_partial_families"
    assert REG.list() == ["fine"]  # the module after the broken one still registered
    assert list(REG.failures) == ["medaug_partial_families.a_broken"]
    with pytest.raises(ValueError, match=r"unknown widget 'broken'.*medaug_partial_families.a_broken \(it needs the "
                                         r"module 'medaug_no_such_dependency', which is not installed\)"):
        REG.get("broken")
    for name in [m for m in sys.modules if m.startswith("medaug_partial_families")]:
        sys.modules.pop(name)
