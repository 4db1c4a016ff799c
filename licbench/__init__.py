"""licbench: a benchmarking and comparison suite for learned image compression."""

import warnings

__version__ = "0.1.0"

# compressai still calls torch.jit.script at import time; every process that loads a learned codec
# (the CLI and its parallel workers) would print torch's deprecation notice, which is not ours to act on.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
