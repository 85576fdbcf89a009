"""The commands that combine layers: each reads data or a checkpoint, runs a library of its own layer or
several (evaluation, training, inference) and writes or renders what it found. The libraries below import
none of these; cli.py and the Python API call them.

- evaluate  `imgclf evaluate`: a checkpoint scored on a split (commands/evaluate.py)
- lr_find   `imgclf lr-find`: the learning-rate range test on the configured data and model, with its plot
- inspect   `imgclf inspect`: a dataset's health report, label issues scored by a checkpoint's predictor
"""
