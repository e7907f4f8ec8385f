# Written by setup.py at build time.
WITH_CUDA = False
CUDA_ARCH_LIST = ''
TORCH_VERSION = '2.13.0+cpu'
