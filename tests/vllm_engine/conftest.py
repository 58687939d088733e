"""vLLM tests run vLLM in the test process (no engine-core subprocess): set before vLLM is imported."""

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
