"""Reliability round four: what a first-user and a plugin-author audit found (session 14).

Each test reproduces a reported failure; it failed before the fix.
"""

from __future__ import annotations

import re

import pytest
import torch

from cbdm_cli import plugin_errors
from cbdm_core import build, registry
from cbdm_core.errors import CbdmError
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import SamplerSpec
from cbdm_core.methods.base import MethodSpec, TrainingMethod
from cbdm_core.methods.cbdm import CBDMOptions, CBDMRegularizer
from cbdm_core.objectives import DiffusionObjective
from cbdm_core.sampling import sample
from cbdm_core.schedules import LinearSchedule

from .helpers import cli_fails, cli_ok, invoke_cli, tiny_unet


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("change, match", [
    (("--set", "model.options.ch=6"), "divisible"),  # the network refuses its options
    (("--dataset", "mnist-lt"), "needs --data-root"),  # the data cannot load
    (("--init-from", "EMPTY"), "EMPTY"),  # the weights to start from cannot load
    (("--evaluate-every", "1", "--evaluate-classifier", "EMPTY"), "EMPTY"),  # nor the evaluation's classifier
])
def test_overwrite_refused_for_its_config_keeps_the_previous_run(tmp_path, tiny_config, change, match):
    """`--overwrite` removed the old run before the new one was built: a refused new run left neither."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    change = tuple(str(empty) if c == "EMPTY" else c for c in change)
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    before = {p: (run / p).read_bytes() for p in _listing(run)}
    assert any(p.startswith("checkpoints/") for p in before)
    cli_fails("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2", "--overwrite", *change,
              match=str(empty) if match == "EMPTY" else match)
    assert {p: (run / p).read_bytes() for p in _listing(run)} == before
    cli_ok("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "3", "--no-progress")


# -- a plugin sampler that returns the wrong batch -------------------------------------------------------------

class _OneImageSampler:
    """A sampler plugin with a slip: it returns one image for the whole batch."""

    @hookimpl
    def register_components(self, register):
        register("sampler", "one-image", SamplerSpec(run=lambda model, schedule, x_T, y, **kw: x_T[:1].clone(),
                                                     default_steps=2))


@pytest.fixture
def one_image_registry():
    registry._DEFAULT = registry.build_registry([_OneImageSampler()])
    yield
    registry.reset_registry()


def test_a_sampler_returning_the_wrong_batch_is_one_clear_error(tmp_path, tiny_config, one_image_registry):
    """Its one image was broadcast by numpy into every image of the shard: N copies, 'N images' reported."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_fails("sample", run, "--sampler", "one-image", "-n", "4", "--no-progress",
              match="the one-image sampler returned shape (1, 1, 8, 8)")
    assert not list(run.glob("samples-one-image*/shard-*.npz"))
    with pytest.raises(CbdmError, match="must return float images shaped like its x_T"):
        sample(tiny_unet(3).eval(), LinearSchedule(T=100), torch.randn(4, 1, 8, 8), torch.arange(4) % 3,
               sampler="one-image")


# -- registrations that break their kind's contract -----------------------------------------------------------

class _Broken:
    def __init__(self, kind, name, obj):
        self.kind, self.name, self.obj = kind, name, obj

    @hookimpl
    def register_components(self, register):
        register(self.kind, self.name, self.obj)


@pytest.mark.parametrize("kind, name, obj, match", [
    ("method", "plain-function", lambda options, ctx: None, "without 'options_model'; register a MethodSpec"),
    ("method", "no-options", MethodSpec(options_model=None, build=lambda o, c: None), "options_model must be"),
    ("sampler", "plain-function", lambda *a, **k: None, "without 'run'; register a SamplerSpec"),
    ("backbone", "dict", {"build": None}, "without 'options_model'; register a BackboneSpec"),
    ("label_distribution", "not-callable", [0.5, 0.5], "not a callable factory"),
    ("guidance", "not-callable", 3, "not a GuidanceSpec or a callable"),
    ("method", "a+b", MethodSpec(options_model=CBDMOptions, build=lambda o, c: None), "cannot be selected"),
    ("method", "ddpm", MethodSpec(options_model=CBDMOptions, build=lambda o, c: None), "cannot be selected"),
    ("label_distribution", "x:y", lambda counts, arg: counts, "cannot be selected"),
])
def test_a_registration_that_breaks_its_contract_is_refused(kind, name, obj, match):
    """Accepted before: `cbdm methods` then failed with an AttributeError for everyone, or the name
    could never be selected (`a:b` is looked up as `a`; `--method ddpm` means no method)."""
    with pytest.raises(CbdmError, match=re.escape(match)):
        registry.build_registry([_Broken(kind, name, obj)])


def test_an_entry_point_plugin_that_breaks_a_contract_is_left_out_and_methods_still_lists(monkeypatch):
    broken = _Broken("method", "plain-function", lambda options, ctx: None)
    monkeypatch.setattr(registry, "_entry_point_plugins",
                        lambda pm, reg: (pm.register(broken, name="broken"), {id(broken): ("brokenpkg", "0.1")})[1])
    reg = registry.build_registry()
    assert [p.plugin for p in reg.problems] == ["brokenpkg:broken"]
    assert "register a MethodSpec" in reg.problems[0].error
    assert "plain-function" not in reg.names("method")


# -- a method's or a network's output of the wrong shape -----------------------------------------------------

class _Slip(TrainingMethod):
    """A method plugin with one slip at a time."""

    def __init__(self, slip: str):
        super().__init__()
        self.slip, self.name = slip, "slip"

    def target(self, ctx):
        return ctx.target[:, :, :1] if self.slip == "target" else None

    def extra_labels(self, ctx):
        if self.slip == "extra":
            return ctx.y_in[None, :3].clone()
        if self.slip == "float-extra":
            return ctx.y_in[None].float()
        return None

    def loss(self, ctx, out):
        if self.slip == "vector":
            return {"slip": out.pred.mean()}, out.pred.mean((1, 2, 3))
        if self.slip == "clash":
            return {"diffusion": out.pred.mean() * 0}, out.pred.mean() * 0
        return {}, out.pred.sum() * 0


@pytest.mark.parametrize("slip, match", [
    ("target", "target must return a tensor shaped like ctx.target (6, 1, 8, 8) or None, got (6, 1, 1, 8)"),
    ("extra", "extra_labels must return integer labels shaped [S, 6] or None, got (1, 3)"),
    ("float-extra", "extra_labels must return integer labels shaped [S, 6]"),
    ("vector", "loss must return a scalar tensor as its contribution, got (6,)"),
    ("clash", "loss term name(s) diffusion already used"),
])
def test_a_method_output_of_the_wrong_shape_is_one_line_naming_it(slip, match):
    """A wrong target was broadcast into the loss and trained on; a term named `diffusion` replaced the logged
    one; the others failed inside torch (`torch.cat`, `backward`) without naming the method."""
    objective = DiffusionObjective(LinearSchedule(T=100), 3, [_Slip(slip)])
    x0, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 3
    with pytest.raises(CbdmError, match=re.escape(f"method 'slip': {match}")):
        objective(tiny_unet(3), x0, y)


def test_a_network_output_of_the_wrong_shape_is_one_line():
    class Cropped(torch.nn.Module):
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.net = tiny_unet(3)

        def forward(self, x, t, y, *args):
            return self.net(x, t, y)[:, :, :4]

    objective = DiffusionObjective(LinearSchedule(T=100), 3, [CBDMRegularizer(probs=torch.ones(3) / 3)])
    with pytest.raises(CbdmError, match=re.escape("the network returned (12, 1, 4, 8) for input (12, 1, 8, 8)")):
        objective(Cropped(), torch.randn(6, 1, 8, 8), torch.arange(6) % 3)


@pytest.mark.parametrize("probs, match", [
    (torch.ones(2), "returned shape (2,) for 3 classes"),
    (torch.tensor([0.5, -0.1, 0.6]), "returned weights that are not finite, non-negative and of positive sum"),
    (torch.zeros(3), "returned weights that are not finite, non-negative and of positive sum"),
    ("uniform", "returned a str, not probabilities"),
])
def test_a_label_distribution_output_is_checked_where_it_is_resolved(probs, match):
    """A wrong length was blamed on the class counts; a negative weight failed in torch.multinomial after the
    data had loaded."""
    lookup = build._probs(lambda name: (lambda counts, arg: probs))
    with pytest.raises(CbdmError, match=re.escape(f"label distribution 'mine' {match}")):
        lookup("mine", torch.tensor([10, 5, 1]))


# -- an exception inside a plugin's own code ------------------------------------------------------------------

class _RaisingDistribution:
    @hookimpl
    def register_components(self, register):
        def tail_pow(counts, arg):
            return torch.as_tensor(counts, dtype=torch.float32) ** float(arg)  # float("abc"): a ValueError
        register("label_distribution", "tailpow", tail_pow)


@pytest.fixture
def raising_registry(monkeypatch):
    registry._DEFAULT = registry.build_registry([_RaisingDistribution()])
    # As if this test module were the installed plugin package "testplug".
    monkeypatch.setattr(plugin_errors, "third_party_packages", lambda: {"tests": "testplug 0.1"})
    yield
    registry.reset_registry()


def test_a_plugin_exception_is_one_line_naming_the_plugin(tmp_path, tiny_config, raising_registry, monkeypatch):
    """It was a 60-line traceback through cbdm's internals, naming no plugin."""
    cfg = tiny_config.write(tmp_path)
    args = ("train", "--config", cfg, "--out", tmp_path / "run", "--no-progress", "--steps", "2",
            "--y-dist", "tailpow:abc")
    line = cli_fails(*args, match="plugin testplug 0.1 raised ValueError: could not convert string to float")
    assert "tail_pow" in line and "CBDM_TRACEBACK=1" in line
    monkeypatch.setenv("CBDM_TRACEBACK", "1")
    res = invoke_cli(*args)
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)


def test_cbdm_s_own_exceptions_keep_their_traceback():
    try:
        raise RuntimeError("a bug in cbdm")
    except RuntimeError as exc:
        assert plugin_errors.plugin_error_line(exc, {"somepkg": "somepkg 1.0"}) is None


# -- the CLI around sampler options ---------------------------------------------------------------------------

def test_sampler_settings_get_their_own_default_folder(tmp_path, tiny_config):
    """An `-S` run took the plain command's folder, and the plain command was then refused there."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    base = ("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "3", "--no-progress")
    cli_ok(*base, "-S", "skip=1", "--eta", "1")
    cli_ok(*base)
    assert sorted(p.name for p in run.glob("samples-*")) == ["samples-ddim-2-w0", "samples-ddim-2-w0-eta=1-skip=1"]


def test_plugins_lists_each_component_s_options():
    """`a sampler takes no argument after ':' ... (cbdm plugins lists them)`: it listed no options."""
    import json

    rows = json.loads(cli_ok("plugins", "--kind", "sampler", "--json").output)
    ddim = next(r for r in rows if r["name"] == "ddim")
    assert {o["name"] for o in ddim["options"]} >= {"spacing", "skip", "boost_gamma"}
    text = cli_ok("plugins", "--kind", "guidance").output
    assert "classifier=(required)" in text and "PydanticUndefined" not in text


def test_the_registration_check_names_the_contracts_of_components_py():
    from cbdm_core.component_contracts import _SPEC_MEMBERS
    from cbdm_core.components import KIND_SPECS

    for kind, (spec, members) in _SPEC_MEMBERS.items():
        assert KIND_SPECS[kind].__name__ == spec
        fields = getattr(KIND_SPECS[kind], "__dataclass_fields__", {})
        assert all(m in fields for m, _ in members), (kind, members)


# -- the Python API ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(tau=-1.0), "tau must be a finite number >= 0"),
    (dict(gamma=float("nan")), "gamma must be a finite number >= 0"),
    (dict(p_uncond=2.0), "p_uncond must be in [0, 1]"),
    (dict(set_size=0), "set_size must be an integer >= 1"),
    (dict(y=torch.tensor([0, 1, 2, 7])), "y holds labels outside 0..3"),
    (dict(y=torch.tensor([0.0, 1.0, 2.0, 0.0])), "y must be integer labels of shape [4]"),
    (dict(t=torch.tensor([0, 1, 2, 100])), "t holds timesteps outside 0..99"),
    (dict(t=torch.tensor([0.5, 1.0, 2.0, 3.0])), "t must be integer timesteps of shape [4]"),
    (dict(noise=torch.randn(4, 1, 4, 4)), "noise must have x0's shape (4, 1, 8, 8)"),
    (dict(y_prime=torch.tensor([0, 1, 2, 0, 1])), "y_prime has shape (5,), expected [4] or [S, 4]"),
])
def test_cbdm_loss_refuses_bad_arguments_in_one_line(kwargs, match):
    """They gave a negative total (tau -1), torch's IndexError from the user's embedding, or a view error."""
    from cbdm_core.methods.cbdm import cbdm_loss

    args = {"y": torch.tensor([0, 1, 2, 0]), "t": None, "noise": None}
    args.update({k: v for k, v in kwargs.items() if k in args})
    rest = {k: v for k, v in kwargs.items() if k not in ("y", "t", "noise")}
    with pytest.raises(CbdmError, match=re.escape(match)):
        cbdm_loss(tiny_unet(3), torch.randn(4, 1, 8, 8), args["y"], LinearSchedule(T=100), t=args["t"],
                  noise=args["noise"], **rest)


def test_load_run_on_a_missing_gpu_is_one_line(tmp_path, tiny_config, monkeypatch):
    from cbdm_core.run import load_run

    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CbdmError, match="device cuda requested but no CUDA GPU is available"):
        load_run(run, device="cuda")


# -- cbdm export and cbdm eval, from the first-user audit -----------------------------------------------------

def test_export_refusals_are_one_line(tmp_path, tiny_config):
    """A parent of --out that is a file was a FileExistsError traceback; a file as --out was told to use
    --overwrite (which cannot help); a CORAL run failed with the mapping's 'unexpected coral_head...'."""
    pytest.importorskip("diffusers")
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    afile = tmp_path / "afile"
    afile.write_text("hi")
    cli_fails("export", run, "--format", "diffusers", "--out", afile / "ex", match=f"cannot create {afile / 'ex'}")
    cli_fails("export", run, "--format", "diffusers", "--out", afile, "--overwrite", match="is a file")
    coral = tmp_path / "coral"
    cli_ok("train", "--config", cfg, "--out", coral, "--no-progress", "--steps", "2", "--method", "coral")
    cli_fails("export", coral, "--format", "diffusers", "--out", tmp_path / "ex2",
              match="weights its training methods added (coral_head.")


def test_an_empty_reference_stats_file_is_one_line(tmp_path, tiny_config):
    """np.load of an empty file raises EOFError, which click turned into a bare 'Aborted!'."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_ok("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "6", "--no-progress")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    cli_fails("eval", run / "samples-ddim-2-w0", "--reference-stats", empty, "--metrics", "fid",
              match=f"cannot read reference statistics {empty}")


def test_resume_refuses_overwrite_and_steps_below_its_checkpoint(tmp_path, tiny_config):
    """Both went through: `done: step 4`, with config.yaml rewritten to the smaller steps and the last
    checkpoint and grid rewritten."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4")
    before = {p: (run / p).read_bytes() for p in _listing(run)}
    cli_fails("train", "--out", run, "--no-progress", "--steps", "4", "--resume", "--overwrite",
              match="give one of them")
    cli_fails("train", "--out", run, "--no-progress", "--steps", "2", "--resume", match="is at step 4, past --steps 2")
    assert {p: (run / p).read_bytes() for p in _listing(run)} == before
    cli_ok("train", "--out", run, "--no-progress", "--steps", "4", "--resume")  # a finished run: nothing to do


def test_sampling_chosen_seeds_reports_what_it_wrote_and_no_eval_of_a_partial_folder(tmp_path, tiny_config):
    """It said '12 images as PNG class folders' for 3 written, and printed a `cbdm eval` that then failed."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    out = tmp_path / "png"
    res = cli_ok("sample", run, "--steps", "2", "-n", "12", "--format", "png", "--seeds", "0-2", "--out", out,
                 "--no-progress")
    assert "3 chosen image(s) of the 12" in res.output and "next: cbdm eval" not in res.output, res.output
    assert len(list(out.rglob("*.png"))) == 3 + 1  # the three images and the grid
    res = cli_ok("sample", run, "--steps", "2", "-n", "12", "--format", "png", "--out", out, "--no-progress")
    assert "12 images" in res.output and "next: cbdm eval" in res.output, res.output


def test_resume_with_an_emptied_config_uses_the_checkpoint_s(tmp_path, tiny_config):
    """It resumed with the paper defaults and failed on a 600-character weights mismatch."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    (run / "config.yaml").write_text("")
    res = cli_ok("train", "--out", run, "--no-progress", "--steps", "4", "--resume")
    assert "is empty; resuming with the configuration stored in" in res.output
    assert (run / "checkpoints" / "ckpt-00000004.safetensors").is_file()
    assert "ch: 8" in (run / "config.yaml").read_text()  # the run's own network, written back whole


def test_messages_from_the_first_user_audit(tmp_path, tiny_config):
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_fails("eval", tmp_path / "nonexistent", match="does not exist")
    cli_fails("sample", run, "--sampler", "ddpm", "--steps", "5", "-n", "3", "--no-progress",
              match="leave the steps out (no --steps)")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text("{bad")
    line = cli_fails("eval", tmp_path / "s", "--dataset", "digits-lt", match="is not a readable manifest")
    assert "--overwrite`" in line and "new --out" not in line
    empty = tmp_path / "e.safetensors"
    empty.write_bytes(b"")
    line = cli_fails("sample", run, "--guidance-method", "classifier", "-G", f"classifier={empty}", "-n", "3",
                     "--steps", "2", "--no-progress", match="is not a readable safetensors file")
    assert line.count(str(empty)) == 1, line


def test_import_of_a_cbdm_checkpoint_says_what_it_is(tmp_path, tiny_config):
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    (ckpt,) = (run / "checkpoints").glob("ckpt-*.safetensors")
    cli_fails("import-checkpoint", ckpt, tmp_path / "imported", match="is a cbdm checkpoint already")


def test_the_command_line_shows_a_warning_as_one_line():
    import subprocess
    import sys

    # main() installs the one-line form (a library user keeps Python's own).
    code = ("import sys, warnings\nfrom cbdm_cli.main import main\nsys.argv = ['cbdm', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nwarnings.warn('Boost-and-Skip with boost_gamma=4')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.endswith("warning: Boost-and-Skip with boost_gamma=4\n"), proc.stderr
    assert "UserWarning" not in proc.stderr


# -- studies: the image-level records behind the tests -------------------------------------------------------

@pytest.fixture
def two_shards(tmp_path):
    from .run_helpers import tiny_protocol, write_protocol

    shards = []
    for seed in (0, 1):
        proto = write_protocol(tmp_path / f"p{seed}.yaml", tiny_protocol(tmp_path, seeds=[seed],
                                                                          guidance={"fixed": 1.0}))
        cli_ok("compare", proto, "--out", tmp_path / f"s{seed}", "--no-progress")
        shards.append((proto, tmp_path / f"s{seed}"))
    return shards


@pytest.mark.parametrize("damage, match", [
    ("delete", "records.csv is missing while other reports"),
    ("header", "has 0 rows for the 40 images evaluated"),
    ("cut", "rows for the 40 images evaluated"),
    ("text", "is unreadable (could not convert string to float"),
])
def test_damaged_records_are_refused_by_merge_and_evaluated_again_by_the_study(tmp_path, two_shards, damage, match):
    """A missing or cut records.csv silently left a seed's images out of the image-level tests (CMH strata,
    bootstrap); a non-number in it was a traceback."""
    (proto0, s0), (proto1, s1) = two_shards
    records = s1 / "runs" / "cbdm" / "seed-1" / "report-w1" / "records.csv"
    text = records.read_text()
    lines = text.splitlines(keepends=True)
    if damage == "delete":
        records.unlink()
    elif damage == "header":
        records.write_text(lines[0])
    elif damage == "cut":
        records.write_text("".join(lines[:11]))
    else:
        cells = lines[1].split(",")
        records.write_text(lines[0] + ",".join([cells[0], "abc", *cells[2:]]) + "".join(lines[2:]))
    cli_fails("compare", "merge", s0, s1, "--out", tmp_path / "merged", match=match)
    cli_ok("compare", proto1, "--out", s1, "--no-progress")  # the study evaluates that report again
    assert records.read_text() == text
    cli_ok("compare", "merge", s0, s1, "--out", tmp_path / "merged2")


# -- sweeps ------------------------------------------------------------------------------------------------------

def test_a_training_sweep_reuses_only_runs_of_its_own_config(tmp_path, tiny_config):
    """Runs of another lr/seed were re-used and labelled as this command's; a run trained past --train-steps was
    reported as trained for fewer; p_uncond 0 with guidance was refused only after the first run trained."""
    cfg, out = tiny_config.write(tmp_path), tmp_path / "sweep"
    base = ("sweep", "tau", "--values", "0,0.001", "--config", cfg, "--num", "6", "--steps", "2", "--out", out)
    cli_ok(*base, "--train-steps", "3", "--guidance", "0")
    before = sorted(_listing(out / "tau-0"))
    cli_fails(*base, "--train-steps", "3", "--guidance", "0", "--set", "optim.lr=0.01",
              match="holds a run trained with other settings (differs in optim.lr)")
    cli_fails(*base, "--train-steps", "2", "--guidance", "0", match="trained for 3 steps, more than the 2 asked")
    line = cli_fails(*base, "--train-steps", "3", "--guidance", "0", "--steps", "3", match="other settings")
    assert "--overwrite" not in line  # cbdm sweep has none
    assert sorted(_listing(out / "tau-0")) == before
    cli_fails("sweep", "tau", "--values", "0,0.001", "--config", cfg, "--num", "6", "--steps", "2",
              "--out", tmp_path / "nd", "--train-steps", "2", "--guidance", "1", "--set", "objective.p_uncond=0",
              match="without label dropout")
    assert not (tmp_path / "nd" / "tau-0").exists()


def test_a_curve_without_the_fixed_w_gets_the_report_as_its_point(tmp_path):
    """`fixed: 1, curve: [0, 2]` (digits-lt-sampling-ancestral's) left w = 1 out of the curve, its plots and the
    comparison at matched tail accuracy, with no message."""
    import json

    from .run_helpers import tiny_protocol, write_protocol

    proto = write_protocol(tmp_path / "p.yaml", tiny_protocol(tmp_path, seeds=[0], guidance={"fixed": 1.0,
                                                                                         "curve": [0, 2]}))
    out = tmp_path / "study"
    cli_ok("compare", proto, "--out", out, "--no-progress")
    doc = json.loads((out / "compare.json").read_text())
    assert [p["w"] for p in doc["guidance_curve"]["cbdm"]] == [0.0, 1.0, 2.0]
    assert not (out / "runs" / "cbdm" / "seed-0" / "curve-w1").exists()  # the report folder is that point
    # Which test each Holm p came from is recorded and shown (a rate's CMH may fall back to the seed t-test).
    md = (out / "compare.md").read_text()
    for t in doc["primary_tests"]:
        assert doc["methods"][t["method"]]["difference_to_baseline"][t["value"]]["holm_test"] == t["test"]
    fallback = [t for t in doc["primary_tests"] if t["test"].startswith("paired t") and t["p_holm"] is not None]
    assert ("`p Holm` marked (t)" in md) == bool(fallback)
    if any(t["p"] is None for t in doc["primary_tests"]):
        assert "the Holm family has" in md


# -- cbdm eval, from the data and evaluation audit -----------------------------------------------------------

def _folder_dataset(root, classes=("a", "b"), per_class=6, size=8):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_eval_of_a_run_whose_dataset_has_no_held_out_image_keeps_its_metrics(tmp_path, tiny_config):
    """memorization's held-out check had an empty pool (a folder without test/): a torch.cat traceback, no report."""
    data = _folder_dataset(tmp_path / "data")
    cfg, run = tiny_config.write(tmp_path, data={"dataset": "folder", "root": str(data)}), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_ok("sample", run, "--steps", "2", "-n", "8", "--no-progress")
    clf = tmp_path / "clf.safetensors"
    cli_ok("eval", "train-classifier", "--dataset", "folder", "--data-root", data, "--epochs", "1", "--out", clf)
    res = cli_ok("eval", run / "samples-ddim-2-w0", "--classifier", clf, "--metrics", "fid,memorization")
    assert "no real image outside the diffusion training set" in res.output
    assert (run / "samples-ddim-2-w0" / "metrics.json").is_file()


def test_a_second_eval_into_a_folder_leaves_none_of_the_first_one_s_files(tmp_path, tiny_config):
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_ok("sample", run, "--steps", "2", "-n", "30", "--no-progress")
    folder = run / "samples-ddim-2-w0"
    cli_ok("eval", folder)
    assert (folder / "per_class_fid.png").is_file() and (folder / "heldout-real.json").is_file()
    cli_ok("eval", folder, "--metrics", "fid")
    assert not (folder / "per_class_fid.png").exists() and not (folder / "heldout-real.json").exists()


def _split_folder(root, train_counts, test_classes, size=8):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, classes in (("train", train_counts), ("test", {c: 2 for c in test_classes})):
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_a_classifier_in_another_class_order_is_refused(tmp_path, tiny_config):
    """A run with data.class_order count scored by a name-order classifier: accuracy 0 for perfect images."""
    data = _split_folder(tmp_path / "data", {"a": 3, "b": 12, "c": 6}, "abc")
    cfg = tiny_config.write(tmp_path, data={"dataset": "folder", "root": str(data), "class_order": "count"})
    run = tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_ok("sample", run, "--steps", "2", "-n", "6", "--no-progress")
    by_name, by_count = tmp_path / "name.safetensors", tmp_path / "count.safetensors"
    cli_ok("eval", "train-classifier", "--dataset", "folder", "--data-root", data, "--epochs", "1", "--out", by_name)
    cli_fails("eval", run / "samples-ddim-2-w0", "--classifier", by_name, "--metrics", "fid",
              match="orders its classes a, b, c, the reference b, c, a")
    cli_ok("eval", "train-classifier", "--dataset", "folder", "--data-root", data, "--epochs", "1",
           "--class-order", "count", "--out", by_count)
    cli_ok("eval", run / "samples-ddim-2-w0", "--classifier", by_count, "--metrics", "fid")


def test_a_folder_split_with_other_classes_is_refused(tmp_path):
    """test/ with a, b, d beside train/ with a, b, c: class c's samples were scored against d's images."""
    from cbdm_core.data import dataset_options, load_dataset

    data = _split_folder(tmp_path / "data", {"a": 2, "b": 2, "c": 2}, "abd")
    with pytest.raises(CbdmError, match=re.escape("test/ and train/ hold other classes (c, d in one only)")):
        load_dataset("folder", dataset_options(root=data, split="test"))


@pytest.mark.parametrize("mu, sigma, match", [
    ([0.0, float("nan")], [[1.0, 0.0], [0.0, 1.0]], "holds NaN or inf"),
    ([0.0, 0.0], [[1.0, 1.0], [0.0, 1.0]], "not symmetric"),
    ([0.0, 0.0], [[-1.0, 0.0], [0.0, -1.0]], "negative eigenvalues"),
])
def test_reference_statistics_must_be_a_mean_and_a_covariance(tmp_path, mu, sigma, match):
    """sigma = -I gave 'fid 50.3', a non-symmetric sigma 'fid 259.8'; a NaN was blamed on the sample features."""
    import numpy as np

    from cbdm_core.evaluation.reference import load_fid_stats

    path = tmp_path / "stats.npz"
    np.savez(path, mu=np.asarray(mu), sigma=np.asarray(sigma))
    with pytest.raises(CbdmError, match=match):
        load_fid_stats(path)
    np.savez(path, mu=np.zeros(2), sigma=np.eye(2))
    assert load_fid_stats(path)[1].shape == (2, 2)


def test_compare_dry_run_checks_the_study_folder(tmp_path):
    """--dry-run printed a plan the real run then refused (a folder of another protocol, a file)."""
    from .run_helpers import tiny_protocol, write_protocol

    proto = write_protocol(tmp_path / "p.yaml", tiny_protocol(tmp_path, seeds=[0], guidance={"fixed": 1.0}))
    out = tmp_path / "study"
    out.mkdir()
    (out / "protocol.json").write_text('{"name": "other"}')
    cli_fails("compare", proto, "--out", out, "--dry-run", match="holds a study of a different protocol")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cli_fails("compare", proto, "--out", afile, "--dry-run", match="is a file, not a folder")


@pytest.mark.parametrize("flag, value, match", [("--lr", "-1", "--lr must be a finite number > 0"),
                                                ("--lr", "nan", "--lr must be a finite number > 0"),
                                                ("--weight-decay", "-1", "--weight-decay must be a finite number")])
def test_downstream_refuses_bad_optimiser_values_before_training(tmp_path, flag, value, match):
    cli_fails("eval", "downstream", "--dataset", "digits-lt", "--epochs", "1", flag, value,
              "--out", tmp_path / "d.json", match=match)


def test_a_folder_as_an_output_file_is_refused_before_the_work(tmp_path):
    cli_fails("eval", "downstream", "--dataset", "digits-lt", "--epochs", "1", "--out", tmp_path,
              match="is a folder; give a file name")
    cli_fails("eval", "train-classifier", "--dataset", "digits", "--epochs", "1", "--out", tmp_path,
              match="is a folder; give a file name")


def test_the_classifier_the_size_error_asks_for_can_be_trained(tmp_path, tiny_config):
    """A run on resized images: the error said `train one with cbdm eval train-classifier --dataset X`, which
    made another classifier of the native size, and the CLI had no way to make the one asked for."""
    cfg = tiny_config.write(tmp_path, data={"dataset": "digits-lt", "resize": 16})
    run = tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_ok("sample", run, "--steps", "2", "-n", "10", "--no-progress")
    native = tmp_path / "native.safetensors"
    cli_ok("eval", "train-classifier", "--dataset", "digits-lt", "--epochs", "1", "--out", native)
    line = cli_fails("eval", run / "samples-ddim-2-w0", "--classifier", native, "--metrics", "fid",
                     match="--image-size 16")
    assert "takes 1x8x8 images" in line
    sized = tmp_path / "sized.safetensors"
    cli_ok("eval", "train-classifier", "--dataset", "digits-lt", "--epochs", "1", "--image-size", "16", "--out", sized)
    cli_ok("eval", run / "samples-ddim-2-w0", "--classifier", sized, "--metrics", "fid")


def test_a_single_class_classifier_is_refused_saying_why(tmp_path):
    data = _folder_dataset(tmp_path / "data", classes=("only",))
    cli_fails("eval", "train-classifier", "--dataset", "folder", "--data-root", data, "--epochs", "1",
              "--out", tmp_path / "c.safetensors", match="needs at least 2 classes to tell apart; the data has 1")


def test_a_metric_option_for_a_metric_not_evaluated_is_said_to_be_ignored(tmp_path, tiny_config):
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_ok("sample", run, "--steps", "2", "-n", "10", "--no-progress")
    res = cli_ok("eval", run / "samples-ddim-2-w0", "--metrics", "fid", "-O", "kid.subset_size=10")
    assert "-O options of kid are ignored: not among --metrics" in res.output


def test_sweep_json_says_whether_every_requested_point_is_there(tmp_path, tiny_config, monkeypatch):
    """An interrupted sweep left a sweep.json whose 'best' was the best of the points done, with nothing saying so."""
    import json

    from cbdm_core.experiments import sweeps

    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    real, calls = sweeps._sample_and_evaluate, []

    def stop_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "_sample_and_evaluate", stop_at_second)
    out = tmp_path / "sweep"
    invoke_cli("sweep", run, "--grid", "0,1", "-n", "10", "--steps", "2", "--out", out)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["requested_points"] == 2 and doc["complete"] is False and len(doc["points"]) == 1
    monkeypatch.setattr(sweeps, "_sample_and_evaluate", real)
    cli_ok("sweep", run, "--grid", "0,1", "-n", "10", "--steps", "2", "--out", out)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["requested_points"] == 2 and doc["complete"] is True


def test_a_classifier_file_with_another_extractor_is_refused(tmp_path):
    """`--extractor inception --classifier X` ignored X silently."""
    clf = tmp_path / "c.safetensors"
    clf.write_bytes(b"")
    cli_fails("eval", tmp_path, "--dataset", "digits-lt", "--extractor", "inception", "--classifier", clf,
              match="--classifier is the file of --extractor classifier")
