"""The model registry, after timm's ``register_model`` / ``create_model``; import from ``cifar_resnet.models``.

A family module decorates one function per model with :func:`register_model`: the function's name is the
model's name, its keyword arguments (``num_classes`` always among them) are the model's arguments.
:func:`create_model` checks the arguments against that signature before calling it (a misspelt one is a
``ValueError``) and sets ``model.model_name`` and ``model.model_kwargs`` on what it returns, so that
``create_model(model.model_name, **model.model_kwargs)`` rebuilds the network. :func:`list_models`,
:func:`is_model`, :func:`model_kwargs_names` and :func:`model_default_kwargs` answer questions about names.
The contract is described in docs/models.md.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = [
    "create_model",
    "is_model",
    "list_models",
    "model_default_kwargs",
    "model_kwargs_names",
    "register_model",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; use as a decorator on a model-building function.

    The function must take ``num_classes`` and only named parameters with defaults (no ``*args`` /
    ``**kwargs``): the signature *is* the list of accepted arguments.
    """
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model '{name}' is already registered")
    params = inspect.signature(fn).parameters
    if "num_classes" not in params:
        raise TypeError(f"model function '{name}' must take a num_classes argument")
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"model function '{name}' must not take *args or **kwargs")
        if p.default is p.empty:
            raise TypeError(f"model function '{name}': argument '{p.name}' needs a default")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def _get(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def model_kwargs_names(name: str) -> list[str]:
    """Keyword arguments model ``name`` accepts (``num_classes`` included), in signature order."""
    return list(inspect.signature(_get(name)).parameters)


def model_default_kwargs(name: str) -> dict[str, Any]:
    """Default value of each argument of model ``name`` (JSON-ready: tuples become lists)."""
    params = inspect.signature(_get(name)).parameters
    return {k: _jsonable(name, k, p.default) for k, p in params.items()}


def _jsonable(model: str, key: str, value: Any) -> Any:
    """``value`` as plain JSON data (tuples -> lists); ValueError if it cannot be stored in a checkpoint."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_jsonable(model, key, v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"model '{model}': argument '{key}' must be finite, got {value!r}")
    try:
        json.dumps(value)
    except TypeError:
        raise ValueError(
            f"model '{model}': argument '{key}' must be JSON-serialisable (numbers, strings, bools, "
            f"lists), got {type(value).__name__}"
        ) from None
    return value


def create_model(name: str, num_classes: int = 100, **kwargs: Any) -> nn.Module:
    """Build registered model ``name`` for ``num_classes`` classes.

    Raises ``ValueError`` for an unknown name, an argument the model does not take, or fewer than two
    classes. The model gets ``model_name`` and ``model_kwargs`` attributes, from which a checkpoint rebuilds it.
    """
    fn = _get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    sig = inspect.signature(fn)
    unknown = sorted(set(kwargs) - set(sig.parameters))
    if unknown:
        accepted = ", ".join(sig.parameters)
        raise ValueError(
            f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for model "
            f"'{name}'; accepted: {accepted}"
        )
    bound = sig.bind(num_classes=num_classes, **kwargs)
    bound.apply_defaults()
    model_kwargs = {k: _jsonable(name, k, v) for k, v in bound.arguments.items()}
    model = fn(**bound.arguments)
    model.model_name = name
    model.model_kwargs = model_kwargs
    return model
