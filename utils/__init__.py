"""Library code: data, augmentation, targets, decode/NMS, metrics, export, drawing."""
