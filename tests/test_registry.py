"""Plugin discovery, lookups and conflicts."""

import pytest

from cbdm_core.errors import DuplicateComponentError, UnknownComponentError
from cbdm_core.hookspecs import hookimpl
from cbdm_core.registry import KINDS, build_registry, split_name


def test_builtins_cover_every_core_kind():
    reg = build_registry()
    kinds = {c.kind for c in reg}
    for kind in ("backbone", "noise_schedule", "label_distribution", "method", "sampler", "guidance"):
        assert kind in kinds
    assert {"train", "bal", "sqrt", "pow"} <= set(reg.names("label_distribution"))
    assert {"linear", "cosine"} <= set(reg.names("noise_schedule"))
    # Built-ins come through the entry points like any third-party plugin.
    unet = reg.get("backbone", "unet")
    assert unet.plugin.startswith("cbdm:") and unet.version != "-"


def test_unknown_name_lists_choices():
    reg = build_registry()
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("label_distribution", "nope")
    msg = str(exc.value)
    assert "label distribution" in msg and "'nope'" in msg and "bal" in msg and "sqrt" in msg
    assert "\n" not in msg


def test_name_with_argument():
    assert split_name("pow:0.5") == ("pow", "0.5")
    assert split_name("bal") == ("bal", None)
    reg = build_registry()
    assert reg.get("label_distribution", "pow:0.3").name == "pow"


@pytest.mark.parametrize("kind, name", [("sampler", "ddim:5"), ("backbone", "unet:big"), ("noise_schedule", "linear:2")])
def test_argument_to_a_kind_that_takes_none_is_refused(kind, name):
    # It used to be looked up by the part before ':' and the rest silently dropped.
    from cbdm_core.errors import CbdmError

    with pytest.raises(CbdmError, match="takes no argument after ':'") as exc:
        build_registry().get(kind, name)
    assert "\n" not in str(exc.value)


def test_sampler_argument_is_one_line_in_the_cli(tmp_path):
    from tests.helpers import cli_fails

    cli_fails("sample", tmp_path / "nowhere", "--sampler", "ddim:5", match="takes no argument after ':'")


class _Dup:
    @hookimpl
    def register_components(self, register):
        register("label_distribution", "bal", lambda counts, arg: None)


def test_duplicate_registration_names_both_plugins():
    with pytest.raises(DuplicateComponentError) as exc:
        build_registry([_Dup()])
    msg = str(exc.value)
    assert "bal" in msg and "label_distributions" in msg and "_Dup" in msg


class _BadKind:
    @hookimpl
    def register_components(self, register):
        register("not-a-kind", "x", object())


def test_unknown_kind_is_refused():
    with pytest.raises(Exception, match="unknown kind"):
        build_registry([_BadKind()])


def test_kinds_listed():
    for k in ("backbone", "noise_schedule", "label_distribution", "sampler", "guidance", "dataset",
              "augmentation", "feature_extractor", "metric"):
        assert k in KINDS
