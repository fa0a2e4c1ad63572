"""The package's layering (see the ``convnn`` package docstring) and the contributor tasks.

- Every module belongs to one layer; it imports only from its own layer and lower ones, and
  the imports (module-level and function-local) have no cycle; nothing imports the package
  root.
- ``import convnn`` and its layers import neither matplotlib nor ipywidgets.
- Demonstrations: a new token mixer with its preset, a new dataset and a new model family,
  each added in one place, reach the model and the trainer (a new similarity: ``test_ops.py``; a change of the
  checkpoint format: ``test_run_folder.py``).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "convnn"

#: The layers, lowest first (package docstring). A name covers its submodules.
LAYERS = {
    "shared": ("convnn._checks", "convnn._io", "convnn._version", "convnn.package_data",
               "convnn.paper_vocabulary"),
    "core": ("convnn.kernels", "convnn.kernels_attention", "convnn.kernels_conv2d",
             "convnn.kernels_projection", "convnn.ops", "convnn.attention", "convnn.layers",
             "convnn.models"),
    "training": ("convnn.dataset_base", "convnn.data", "convnn.imagenet", "convnn.checkpoint",
                 "convnn.run_folder", "convnn.train", "convnn.experiments", "convnn.runner"),
    "tooling": ("convnn.stats", "convnn.viz", "convnn.results", "convnn.demo", "convnn.study",
                "convnn.campaign", "convnn.bench", "convnn.__main__"),
}
LEVEL = {name: i for i, (_, names) in enumerate(LAYERS.items()) for name in names}
TOOLING_ONLY = ("matplotlib", "ipywidgets", "IPython")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    while module and module not in LEVEL:
        module = module.rpartition(".")[0]
    return LEVEL.get(module)


def package_imports() -> dict[str, set[str]]:
    """``module -> {convnn modules it imports}``, module-level and function-local alike."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if node.module is None:  # from . import ops: the names are modules
                    targets.update(f"{base}.{alias.name}" for alias in node.names)
                else:
                    targets.add(base)
        found[name] = {t for t in targets if t == "convnn" or t.startswith("convnn.")}
    return found


def _resolve(target: str, modules) -> str:
    """A module of the package for an import target (``convnn.ops.X`` names a module only
    when ``X`` is one)."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def test_every_module_has_a_layer_and_imports_only_downwards():
    imports = package_imports()
    unplaced = sorted(m for m in imports if m != "convnn" and _layer(m) is None)
    assert not unplaced, f"add these modules to LAYERS and the package docstring: {unplaced}"
    upward = []
    for module, targets in imports.items():
        if module == "convnn":
            continue  # the root re-exports the public API
        for target in targets:
            target = _resolve(target, imports)
            if target == "convnn":
                upward.append(f"{module} imports the package root")
            elif _layer(target) > _layer(module):
                upward.append(f"{module} ({_layer(module)}) -> {target} ({_layer(target)})")
    assert not upward, upward


def test_no_import_cycles():
    imports = package_imports()
    graph = {m: {_resolve(t, imports) for t in ts} - {m} for m, ts in imports.items()
             if m != "convnn"}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1  # on the current path
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2  # done

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_layer_check_catches_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The two checks above can fail: on a copy of two modules that break both rules."""
    fake = tmp_path / "convnn"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "ops.py").write_text("from .viz import draw\n")
    (fake / "viz.py").write_text("def draw():\n    from . import ops\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="convnn.ops"):
        test_every_module_has_a_layer_and_imports_only_downwards()
    with pytest.raises(AssertionError, match="convnn.viz"):
        test_no_import_cycles()


def test_the_library_imports_without_the_books_tooling():
    code = ("import sys\n"
            "import convnn\n"
            "from convnn import ConvNN2d, ConvNNAttention, ops\n"
            "import convnn.models, convnn.layers, convnn.attention\n"
            f"print([m for m in {TOOLING_ONLY!r} if m in sys.modules])\n"
            # the whole dataset table, without the modules that use it
            "print(sorted(convnn.data.DATASETS), 'convnn.experiments' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert json.loads(out[0].strip().replace("'", '"')) == []
    assert out[1] == "['cifar10', 'cifar100', 'imagenet'] False"


def test_the_docstring_names_every_layer_module():
    import convnn

    for names in LAYERS.values():
        for name in names:
            assert f"``{name.removeprefix('convnn.')}``" in convnn.__doc__, name


# ------------------------------------------------------------- a new token mixer and its preset
class IdentityMixer(torch.nn.Module):
    """A token mixer with one option, ``k``, that does nothing but a linear map."""

    def __init__(self, dim, num_heads=1, k=3, attn_dropout=0.0, device=None, dtype=None):
        super().__init__()
        self.k = k
        self.proj = torch.nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.proj(x)


def test_a_new_mixer_registered_in_one_place_gets_a_preset_with_its_options():
    from convnn.attention import register_mixer, unregister_mixer
    from convnn.experiments import make_preset
    from convnn.models import ViT, build_model

    register_mixer("ident", IdentityMixer, {"k", "attn_dropout"}, token_limits={"k": 3})
    try:
        preset = make_preset("vit", "cifar10", {"mixer": "ident", "k": 5})
        assert preset.model.mixer == "ident" and preset.model.layer_options == {"k": 5}
        assert "ident" in preset.name and "k5" in preset.name
        model = build_model(dict(preset.model_config().to_dict(), name="vit_tiny",
                                 image_size=32, patch_size=8, depth=1, dim=12, mlp_dim=12))
        assert isinstance(model, ViT)
        mixers = [m for m in model.modules() if isinstance(m, IdentityMixer)]
        assert mixers and all(m.k == 5 for m in mixers)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        # options the mixer does not take are dropped from the settings, as for the others
        plain = make_preset("vit", "cifar10", {"mixer": "ident", "k": 5, "candidates": 4})
        assert plain.model.layer_options == {"k": 5}
    finally:
        unregister_mixer("ident")


# ------------------------------------------------------------------------------ a new dataset
TOY_DATASET = '''
"""A toy dataset, added in this one file: four classes of 8x8 images (a bright quadrant each),
48 in memory, trained under the paper's CIFAR protocol; and a preset of a small ViT on it."""
import torch

from convnn.data import DatasetInfo, ImageDataset, register_dataset
from convnn.experiments import make_preset, register_preset


def quadrants(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 64, (n, 8, 8, 3), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] += 160
    return images, labels


def load(*, data_dir=None, download=True, train_per_class=None, test_per_class=None, **_):
    (train_x, train_y), (test_x, test_y) = quadrants(32, 0), quadrants(16, 1)
    return ImageDataset("quad4", train_x, train_y, test_x, test_y,
                        ("top left", "top right", "bottom left", "bottom right"),
                        mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3), source="quadrants (toy)")


register_dataset(DatasetInfo(name="quad4", title="Quadrants-4", short="q4", num_classes=4,
                             loader=load, mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3),
                             downloadable=False, test_images=16, protocol="paper"))
PRESET = register_preset(make_preset(
    "vit", "quad4", {"model": "vit_tiny_cifar", "mixer": "attention"}, name="vit-q4-toy",
    model_overrides={"image_size": 8, "patch_size": 4, "dim": 16, "depth": 1, "mlp_dim": 32,
                     "num_heads": 2},
    train_overrides={"resize": None, "batch_size": 16}))
'''


def test_a_new_dataset_added_in_one_file_trains_through_the_command_line(tmp_path, monkeypatch,
                                                                         capsys):
    """The contributor task "add a dataset": one file registers it (with its protocol) and a
    preset on it; ``python -m convnn train`` trains it; unregistering removes it again."""
    from convnn import experiments
    from convnn.__main__ import main
    from convnn.data import DATASETS, dataset_info, register_dataset, unregister_dataset
    from convnn.run_folder import RunFolder

    (tmp_path / "toy_dataset.py").write_text(TOY_DATASET, encoding="utf-8")
    monkeypatch.setenv("CONVNN_SMOKE", "0")  # the preset itself (tiny), not its smoke version
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_dataset", raising=False)
    try:
        import toy_dataset

        info = dataset_info("quad4")
        # a dataset must say how its presets train; this one trains as the paper's CIFAR runs
        with pytest.raises(ValueError, match="protocol='paper'.*protocol='family'"):
            register_dataset(dataclasses.replace(info, name="quad4b", protocol=None))
        train = toy_dataset.PRESET.train
        assert (train.optimizer, train.lr, train.weight_decay, train.grad_clip) == (
            "adamw", 1e-4, 0.01, 1.0)
        assert "Quadrants-4" in toy_dataset.PRESET.description
        rc = main(["train", "--preset", "vit-q4-toy", "--epochs", "1", "--out",
                   str(tmp_path / "run"), "--device", "cpu"])
        assert rc == 0 and "best test top-1" in capsys.readouterr().out
        record = RunFolder.read(tmp_path / "run", checkpoint="verify")
        assert record.finished and len(record.records) == 1
        assert record.dataset["name"] == "quad4" and record.dataset["classes"] == 4
        assert (record.dataset["train_images"], record.dataset["test_images"]) == (32, 16)
        assert record.model_config["image_size"] == 8
    finally:
        if "vit-q4-toy" in experiments.PRESETS:
            experiments.unregister_preset("vit-q4-toy")
        if "quad4" in DATASETS:
            unregister_dataset("quad4")
    assert "quad4" not in DATASETS and "vit-q4-toy" not in experiments.PRESETS
    with pytest.raises(ValueError, match="unknown dataset 'quad4'; known datasets"):
        unregister_dataset("quad4")
    with pytest.raises(ValueError, match="reproduces paper rows"):
        experiments.unregister_preset("vgg11-c10-conv2d")


# -------------------------------------------------------------------------- a new model family
TOY_FAMILY = '''
"""A toy model family, added in this one file: a linear classifier on the pixels."""
import torch
from torch import nn

from convnn.experiments import Preset, register_preset
from convnn.models import ModelConfig, ModelFamily, register_model_family
from convnn.train import TrainConfig


class PixelLinear(nn.Module):
    def __init__(self, num_classes, image_size, in_channels, scale, device=None, dtype=None):
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(in_channels * image_size ** 2, num_classes, device=device,
                            dtype=dtype)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1) * self.scale)


def build(config, factory):
    return PixelLinear(config.num_classes, config.image_size or 32, config.in_channels,
                       config.layer_options.get("scale", 1.0), **factory)


register_model_family(ModelFamily("pixel", "PixelLinear", PixelLinear,
                                  image_sizes={"pixel_linear": 32}, build=build,
                                  reduced={"layer_options": {"scale": 0.5}}))
register_preset(Preset("pixel-linear-c10", "pixel", "cifar10",
                       ModelConfig(name="pixel_linear", layer_options={"scale": 2.0}),
                       TrainConfig(epochs=3, batch_size=50, lr=1e-3)))
'''


def test_a_new_model_family_added_in_one_file_trains_through_the_command_line(
        tmp_path, monkeypatch, capsys):
    from convnn import experiments
    from convnn.__main__ import main
    from convnn.models import MODEL_FAMILIES, build_model, unregister_model_family
    from convnn.run_folder import RunFolder
    from convnn.train import model_family

    (tmp_path / "toy_family.py").write_text(TOY_FAMILY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_family", raising=False)
    import toy_family

    try:
        assert "pixel" in MODEL_FAMILIES
        model = build_model({"name": "pixel_linear", "num_classes": 4})
        assert isinstance(model, toy_family.PixelLinear) and model_family(model) == "pixel"
        with pytest.raises(ValueError, match="head='lean' does not apply to 'pixel_linear'"):
            build_model({"name": "pixel_linear", "head": "lean"})
        rc = main(["train", "--preset", "pixel-linear-c10", "--smoke", "--synthetic",
                   "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu"])
        assert rc == 0 and "best test top-1" in capsys.readouterr().out
        record = RunFolder.read(tmp_path / "run", checkpoint="verify")
        assert len(record.records) == 1
        # the smoke run trained the family's reduced model
        assert record.model_config["layer_options"] == {"scale": 0.5}
    finally:
        if "pixel-linear-c10" in experiments.PRESETS:
            experiments.unregister_preset("pixel-linear-c10")
        unregister_model_family("pixel")
    with pytest.raises(ValueError, match="pixel_linear"):
        build_model({"name": "pixel_linear"})


# ------------------------------------------------------------- saved configs still build
def test_every_committed_run_config_builds_the_model_it_trained():
    """The flat ``layer_options`` of every committed ``config.json`` build the layers they
    describe, with the parameter count the run recorded."""
    from convnn.layers import ConvNN2d, ConvNNAttention
    from convnn.models import build_model, count_parameters

    configs = sorted((PACKAGE.parent / "data" / "results").rglob("config.json"))
    assert len(configs) >= 20
    checked = 0
    for path in configs:
        config = json.loads(path.read_text(encoding="utf-8"))
        model_dict = (config.get("extra") or {}).get("model")
        if not isinstance(model_dict, dict):
            continue
        model = build_model(model_dict, device="meta")
        summary = path.with_name("summary.json")
        if summary.is_file():
            recorded = json.loads(summary.read_text(encoding="utf-8")).get("parameters")
            assert count_parameters(model) == recorded, path
        options = model_dict.get("layer_options") or {}
        layers = [m for m in model.modules() if isinstance(m, (ConvNN2d, ConvNNAttention))]
        for layer in layers:
            for name, value in options.items():
                if name in ("seed", "sampling", "candidates", "aggregate_coords"):
                    continue  # planned per layer (see convnn.models.plan)
                assert getattr(layer, name) == value, (path, name)
        checked += 1
    assert checked >= 20


# ------------------------------------------------------------------ narrow constructors
def test_the_papers_layers_take_at_most_three_arguments():
    import inspect

    from convnn import (
        PAPER_ATTENTION,
        PAPER_CONVNN2D,
        ConvNN2d,
        ConvNN2dOptions,
        ConvNNAttention,
        ConvNNAttentionOptions,
    )

    conv = ConvNN2d(16, 32, options=PAPER_CONVNN2D)
    assert (conv.k, conv.coord_grid, conv.random_region, conv.spatial_rounding) == (
        9, "padded", "padded", "truncate")
    attn = ConvNNAttention(48, 3, options=PAPER_ATTENTION)
    assert (attn.k, attn.self_score, attn.attn_dropout_on) == (9, "constant", "output")
    for cls in (ConvNN2d, ConvNNAttention):  # from 24 and 22 arguments
        assert len(inspect.signature(cls.__init__).parameters) <= 16, cls
    # the flat form (a model config's layer_options) builds the same layer
    flat = ConvNN2d.from_config(16, 32, sampling="random", candidates=3,
                                **PAPER_CONVNN2D.changes(), seed=4)
    same = ConvNN2d(16, 32, sampling="random", candidates=3,
                    options=ConvNN2dOptions(**PAPER_CONVNN2D.changes(), seed=4))
    assert repr(flat) == repr(same) and flat.seed == same.seed == 4
    assert ConvNNAttention.from_config(48, 3, **PAPER_ATTENTION.changes()).self_score == \
        "constant"
    with pytest.raises(TypeError, match="options must be a ConvNN2dOptions"):
        ConvNN2d(16, 32, options={"seed": 1})
    with pytest.raises(TypeError, match="options must be a ConvNNAttentionOptions"):
        ConvNNAttention(48, 3, options=PAPER_CONVNN2D)
    with pytest.raises(ValueError, match="flat config"):
        ConvNN2d.from_config(16, 32, options=PAPER_CONVNN2D)
    with pytest.raises(TypeError, match="seed"):
        ConvNN2d(16, 32, seed=1)  # a rarely changed option is not a keyword
    assert ConvNNAttentionOptions().changes() == {}
    # both layers keep their options as one frozen value, resolved, not copied into attributes
    sampled = ConvNNAttention(48, 3, sampling="random", candidates=16, options=PAPER_ATTENTION)
    assert sampled.options == dataclasses.replace(PAPER_ATTENTION, self_first=True)
    sampled.seed = 5  # an option set on the layer replaces the field
    assert sampled.options.seed == 5 and "seed" not in vars(sampled)
    with pytest.raises(ValueError, match="self_score"):
        ConvNNAttentionOptions(self_score="bad")


def test_no_backslash_line_continuations_in_the_package():
    # brackets instead (PEP 8): code-structure tools follow a statement across them
    import io
    import tokenize

    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        in_strings = set()  # lines inside a multi-line string, before its last line
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING:
                in_strings.update(range(tok.start[0], tok.end[0]))
        for number, line in enumerate(source.splitlines(), 1):
            if line.rstrip().endswith("\\") and number not in in_strings:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}")
    assert not found, f"backslash continuations: {found}"
