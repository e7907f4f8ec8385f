# Written by setup.py at build time.
WITH_CUDA = True
CUDA_ARCH_LIST = '8.0;9.0a'
TORCH_VERSION = '2.14.1+cu130'
