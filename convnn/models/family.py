"""The model families: one :class:`ModelFamily` per family, registered by the family's own file.

A family (VGG, ResNet, ViT) is everything the package knows about a kind of model: its model
names (``"vgg11"``...), the builder that turns a :class:`~convnn.models.ModelConfig` into the
module, the optional config fields it reads, its model class, its default input size and its
own training protocol. :class:`~convnn.models.ModelConfig`, :func:`~convnn.models.build_model`,
:func:`convnn.train.model_family`, :mod:`convnn.experiments` and the benchmarks read this
table, so a new family is one file that calls :func:`register_model_family` (see
``CONTRIBUTING.md``).

Example:
    >>> family_of("vit_tiny_cifar").name, default_image_size("vit_tiny_cifar")
    ('vit', 32)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn

#: :class:`~convnn.models.ModelConfig` fields every family reads; the other fields are each
#: read by the families that list them in :attr:`ModelFamily.fields` and must stay ``None``
#: for the rest.
COMMON_FIELDS = frozenset({"name", "num_classes", "image_size", "in_channels",
                           "layer_options"})


@dataclass(frozen=True)
class ModelFamily:
    """One model family: the entry of :data:`MODEL_FAMILIES` its file registers.

    Attributes:
        name: the key (``"vgg"``), as in presets (:attr:`convnn.experiments.Preset.family`).
        title: the human name (``"VGG"``), in messages.
        model_class: the ``nn.Module`` class it builds (:func:`convnn.train.model_family`
            recognises a model, or a module holding one, by it).
        image_sizes: ``{model name: default input side}``: the family's model names (a
            config's ``name``) and the input size each reads when ``image_size`` is ``None``.
        build: ``build(config, factory) -> nn.Module``; ``factory`` holds ``device`` and
            ``dtype`` (give both to every parameter).
        fields: the optional :class:`~convnn.models.ModelConfig` fields it reads (besides
            :data:`COMMON_FIELDS`); a config of this family with any other field set is an
            error naming the families that read it.
        protocol: the family's own training recipe (:class:`~convnn.train.TrainConfig`
            fields), used on datasets whose protocol is ``"family"`` (ImageNet: the paper
            states none); ``None`` if it has none.
        reduced: :class:`~convnn.models.ModelConfig` fields of a small, fast version for smoke
            runs and tests (:func:`convnn.experiments.reduced`).
    """

    name: str
    title: str
    model_class: type[nn.Module]
    image_sizes: Mapping[str, int]
    build: Callable[..., nn.Module]
    fields: frozenset[str] = frozenset()
    protocol: Mapping | None = None
    reduced: Mapping = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The model names of this family."""
        return tuple(self.image_sizes)


_FAMILIES: dict[str, ModelFamily] = {}
MODEL_FAMILIES: Mapping[str, ModelFamily] = MappingProxyType(_FAMILIES)
"""Every registered family by name (a read-only view: add one with
:func:`register_model_family`)."""


def register_model_family(family: ModelFamily) -> ModelFamily:
    """Add a family to :data:`MODEL_FAMILIES` (its model names become valid
    :class:`~convnn.models.ModelConfig` names); returns it. A family name or a model name
    that is taken already is a ``ValueError``."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"family must be a ModelFamily, got {type(family).__name__}")
    if family.name in _FAMILIES:
        raise ValueError(f"a model family named {family.name!r} is registered already "
                         "(unregister_model_family first)")
    if not family.image_sizes:
        raise ValueError(f"model family {family.name!r} needs at least one model name "
                         "(image_sizes={name: default input side})")
    taken = sorted(set(family.image_sizes) & set(model_names()))
    if taken:
        raise ValueError(f"model family {family.name!r}: model name(s) {taken} belong to "
                         f"{family_of(taken[0]).name!r} already")
    unknown = sorted(set(family.fields) & COMMON_FIELDS)
    if unknown:
        raise ValueError(f"model family {family.name!r}: {unknown} are read by every family; "
                         "list only optional fields")
    _FAMILIES[family.name] = family
    return family


def unregister_model_family(name: str) -> None:
    """Remove a family registered with :func:`register_model_family`."""
    if name not in _FAMILIES:
        raise ValueError(f"no model family named {name!r}; registered: {sorted(_FAMILIES)}")
    del _FAMILIES[name]


def model_names() -> tuple[str, ...]:
    """Every model name of every registered family, in registration order."""
    return tuple(n for family in _FAMILIES.values() for n in family.image_sizes)


def family_of(name: str) -> ModelFamily:
    """The family of model ``name``; a ``ValueError`` naming the known models otherwise."""
    for family in _FAMILIES.values():
        if name in family.image_sizes:
            return family
    raise ValueError(f"name must be one of {list(model_names())}, got {name!r}")


def default_image_size(name: str) -> int:
    """The input side model ``name`` reads when its config gives no ``image_size``."""
    return family_of(name).image_sizes[name]


def optional_fields() -> frozenset[str]:
    """The union of every family's :attr:`ModelFamily.fields`."""
    return frozenset(n for family in _FAMILIES.values() for n in family.fields)


__all__ = [
    "COMMON_FIELDS",
    "MODEL_FAMILIES",
    "ModelFamily",
    "default_image_size",
    "family_of",
    "model_names",
    "optional_fields",
    "register_model_family",
    "unregister_model_family",
]
