"""Training the learned codecs: data pipeline (:mod:`.data`), checkpoints and export
(:mod:`.checkpoint`), and the training loop (:mod:`.loop`). The CLI is :mod:`licbench.train`."""
