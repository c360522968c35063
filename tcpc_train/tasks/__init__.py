"""The pretraining tasks: the TCPC/3D CPC head and InfoNCE, the puzzle baselines, the task registry."""
