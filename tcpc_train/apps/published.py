"""Published reference results that our experiments are read against (not our results).

MedMNIST v2 (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark
for 2D and 3D biomedical image classification", Scientific Data 10:41, 2023),
benchmark table for the 3D datasets, AdrenalMNIST3D test split, fully
supervised with 100 % of the training labels.

Transcribed from the paper. The ResNet-50 + 3D row (0.828, 0.745) was checked
against an independent public transcription of https://medmnist.com/v2 (the
benchmark page); the other rows have not been re-checked offline.
"""
from __future__ import annotations

# method -> (AUC, ACC) on the AdrenalMNIST3D test split
MEDMNIST_V2_ADRENAL3D: dict[str, tuple[float, float]] = {
    "ResNet-18 + 2.5D": (0.718, 0.772),
    "ResNet-18 + 3D": (0.827, 0.721),
    "ResNet-18 + ACS": (0.839, 0.754),
    "ResNet-50 + 2.5D": (0.732, 0.763),
    "ResNet-50 + 3D": (0.828, 0.745),
    "ResNet-50 + ACS": (0.828, 0.758),
    "auto-sklearn": (0.828, 0.802),
    "AutoKeras": (0.804, 0.705),
}
