"""longrl: reinforcement learning for video vision-language models on long videos.

`longrl.ops` is the public door to the compiled (`longrl._C`) and Triton (`longrl.kernels`) ops.
"""

__version__ = "0.1.0"
