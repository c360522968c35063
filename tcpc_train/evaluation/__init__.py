"""Judging encoders and classifiers: metrics, intervals and paired tests, the copy-shortcut probe."""
