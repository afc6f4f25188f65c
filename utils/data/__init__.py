"""Files -> records -> batches: image reading, VOC, dataset checks, tf.data/PyDataset, augmentation,
anchors, the demo set. Imports nothing from utils.inference or utils.training."""
