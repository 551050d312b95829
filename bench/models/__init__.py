"""The model zoo: `create_model(name, num_classes, img_size=32, in_chans=3, **model_args)`."""

# Importing the architecture modules registers their models.
from bench.models import alternet, convit, mixer, pa_theory, pit, preact, resnet, swin, vit  # noqa: F401
from bench.models.base import AttentionModel, BenchModel
from bench.models.layers import set_attention_impl
from bench.models.measure import count_flops, count_params
from bench.models.registry import (
    all_model_arg_names,
    check_model_arg,
    create_model,
    is_model,
    list_models,
    model_arg_names,
    model_entry,
    register_model,
)

__all__ = [
    "AttentionModel",
    "BenchModel",
    "all_model_arg_names",
    "check_model_arg",
    "count_flops",
    "count_params",
    "create_model",
    "is_model",
    "list_models",
    "model_arg_names",
    "model_entry",
    "register_model",
    "set_attention_impl",
]
