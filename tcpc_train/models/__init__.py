"""Networks: the 3D encoders (ResNet-18, VGG) and encoder initialisation from any state dict."""
