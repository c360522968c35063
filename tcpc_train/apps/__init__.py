"""Applications that combine the data engine and the trainer: the demo, real-CT runs, experiments and their reports."""
