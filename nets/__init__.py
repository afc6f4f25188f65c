"""Model code: backbones, the YOLOv4-lite body, the loss and custom layers."""
