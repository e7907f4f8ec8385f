"""Integrations of the Domino drafters and ops into serving engines.

``domino_kernels.integrations.vllm``: a vLLM general plugin (entry point group
``vllm.general_plugins``) that runs Domino drafters as vLLM DFlash speculators (docs/vllm.md).
"""
