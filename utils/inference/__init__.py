"""Model files -> detections: the one model opener (runtime.open_model), Detector, predict modes,
sources and writers, heatmaps, export."""
