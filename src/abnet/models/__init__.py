"""Models: the ABN core, the registry and the backbone families (importing a family registers it)."""

# Importing a family registers its plain, _abn and _abn_mt models.
from . import cifar_resnet, densenet, imagenet_resnet, resnext, se_resnet, vgg, wide_resnet  # noqa: F401
from .abn import (
    ABN,
    MASK_MODES,
    ABNOutput,
    AttentionBranch,
    BackboneSplit,
    Classifier,
    abn_loss,
    apply_mask,
    balanced_pos_weight,
    classification_loss,
    perception_logits,
)
from .multitask import MultiTaskABN, group_per_task
from .registry import UnknownModelError, create_model, list_models, model_info, register_pair, register_prefix
from .wrap import split_backbone, stages_of, wrap  # registers the "tv:" prefix

__all__ = [
    "ABN", "MASK_MODES", "ABNOutput", "AttentionBranch", "BackboneSplit", "Classifier", "abn_loss", "apply_mask",
    "balanced_pos_weight", "classification_loss", "perception_logits", "MultiTaskABN", "group_per_task",
    "UnknownModelError", "create_model", "list_models", "model_info", "register_pair", "register_prefix",
    "split_backbone", "stages_of", "wrap",
]
