"""vLLM general plugin: Domino drafters as ``speculative_config={"method": "dflash", "model": DIR}``.

Installed as the entry point ``domino = domino_kernels.integrations.vllm:register`` of the group
``vllm.general_plugins``, so vLLM calls :func:`register` in every process it starts. On a supported
vLLM version it registers the Domino draft architectures and hooks vLLM's V1 DFlash proposer
(``domino_kernels.integrations._vllm_v032``); every hook first checks that the loaded draft model
is a Domino one, so the plugin changes nothing for any other model or speculative method. On any
other vLLM version it patches nothing and the Domino architectures resolve to a model class that
refuses to build, naming the versions this plugin was tested with. docs/vllm.md has the details.

This module imports no vLLM internals at import time: they differ between vLLM versions.
"""
from __future__ import annotations

import logging

import torch.nn as nn

# vLLM versions whose internals the hooks were written against and tested with (docs/vllm.md).
SUPPORTED_VLLM_VERSIONS = ("0.32.0",)

# A Domino draft's config.json names DominoDraftModel; vLLM's draft-config loader renames a DFlash
# draft's architecture to "DFlash" + name, so the registry is asked for DFlashDominoDraftModel.
DOMINO_ARCHITECTURES = ("DominoDraftModel", "DFlashDominoDraftModel")

_MODEL_CLASS = "domino_kernels.integrations._vllm_v032:DominoQwen3ForCausalLM"
_UNSUPPORTED_CLASS = "domino_kernels.integrations.vllm:UnsupportedVLLMVersion"

logger = logging.getLogger(__name__)
_registered = False


def is_supported_version(version: str) -> bool:
    """True for the vLLM releases this plugin supports (local build tags such as ``+cpu`` ignored)."""
    return version.split("+", 1)[0] in SUPPORTED_VLLM_VERSIONS


def unsupported_message(version: str) -> str:
    return (f"domino-kernels' vLLM plugin supports vLLM {', '.join(SUPPORTED_VLLM_VERSIONS)}, but vLLM "
            f"{version} is installed: Domino drafters cannot run on it (the plugin hooks vLLM internals "
            f"that change between releases); install a supported vLLM version (docs/vllm.md)")


class UnsupportedVLLMVersion(nn.Module):
    """What the Domino architectures resolve to on an unsupported vLLM: building it raises."""

    def __init__(self, *args, **kwargs):
        import vllm

        raise RuntimeError(unsupported_message(vllm.__version__))


def register() -> None:
    """The plugin entry point (idempotent: vLLM may call it more than once per process)."""
    global _registered
    if _registered:
        return
    import vllm
    from vllm import ModelRegistry

    if is_supported_version(vllm.__version__):
        from . import _vllm_v032

        _vllm_v032.install_proposer_hooks()
        target = _MODEL_CLASS
    else:
        logger.warning(unsupported_message(vllm.__version__))
        target = _UNSUPPORTED_CLASS
    for arch in DOMINO_ARCHITECTURES:
        ModelRegistry.register_model(arch, target)
    _registered = True
