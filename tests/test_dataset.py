"""utils/data/dataset.py: batch shapes/dtypes, determinism across backends and workers,
unreadable images skipped mid-epoch, difficult boxes, validation letterbox, epoch callback."""
import cv2
import numpy as np
import pytest

from utils.data.dataset import EpochSetter, RecordLoader, TrainDataset, ValDataset
from utils.letterbox import letterbox_image
from utils.data.voc import VocRecord

C = 3


def make_records(tmp_path, n=7, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 140))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = tmp_path / f"img_{i}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        k = int(rng.integers(1, 4))
        x1, y1 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
        boxes = np.stack([x1, y1, x1 + rng.uniform(10, w / 2, k), y1 + rng.uniform(10, h / 2, k)], 1)
        records.append(VocRecord(str(path), boxes.astype(np.float32), rng.integers(0, C, k).astype(np.int32),
                                 np.zeros(k, bool), w, h))
    return records


def check_batch(images, targets, b, hw=(96, 128), max_boxes=100):
    H, W = hw
    assert images.shape == (b, H, W, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255
    assert set(targets) == {"y32", "y16", "y8", "gt_boxes"}
    for key, s in (("y32", 32), ("y16", 16), ("y8", 8)):
        assert targets[key].shape == (b, H // s, W // s, 3, 5 + C) and targets[key].dtype == np.float32
    assert targets["gt_boxes"].shape == (b, max_boxes, 4) and targets["gt_boxes"].dtype == np.float32


def test_batches_shapes_and_tf_data_equals_numpy(tmp_path):
    records = make_records(tmp_path)
    ds = TrainDataset(records, C, (96, 128), batch_size=3, seed=1)
    ds.set_special(True)
    assert len(ds) == 3
    numpy_batches = [ds[i] for i in range(len(ds))]
    for i, (x, y) in enumerate(numpy_batches):
        check_batch(x, y, 3 if i < 2 else 1)
        assert y["y32"][..., 4].sum() + y["y16"][..., 4].sum() + y["y8"][..., 4].sum() >= 1
    for num_parallel in (1, 3):  # same batches whatever the parallelism
        tf_batches = list(ds.as_tf_dataset(num_parallel=num_parallel).as_numpy_iterator())
        assert len(tf_batches) == 3
        for (x, y), (tx, ty) in zip(numpy_batches, tf_batches):
            np.testing.assert_array_equal(x, tx)
            for k in y:
                np.testing.assert_array_equal(y[k], ty[k])
    ds = TrainDataset(records, C, (96, 128), batch_size=3, drop_remainder=True)
    assert len(ds) == 2 and len(list(ds.as_tf_dataset().as_numpy_iterator())) == 2


def test_epoch_shuffle_and_augmentation_deterministic(tmp_path):
    records = make_records(tmp_path)
    a = TrainDataset(records, C, (96, 128), batch_size=4, seed=5)
    b = TrainDataset(records, C, (96, 128), batch_size=4, seed=5)
    other = TrainDataset(records, C, (96, 128), batch_size=4, seed=6)
    for ds in (a, b, other):
        ds.set_epoch(2, 10)
    assert sorted(a.order().tolist()) == list(range(7))
    np.testing.assert_array_equal(a.order(), b.order())
    np.testing.assert_array_equal(a[1][0], b[1][0])
    assert not np.array_equal(a[0][0], other[0][0])
    first = a[0][0]
    a.set_epoch(3, 10)
    assert not np.array_equal(a.order(2), a.order(3)) or not np.array_equal(a[0][0], first)
    a.set_epoch(2, 10)  # resuming epoch 2 gives epoch 2 again
    np.testing.assert_array_equal(a[0][0], first)


def test_unreadable_image_mid_epoch_is_skipped_with_warning(tmp_path):
    records = make_records(tmp_path, n=6)
    bad = tmp_path / "broken_image.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    records[3].image_path = str(bad)
    ds = TrainDataset(records, C, (96, 128), batch_size=2, seed=0, augment=False)  # letterbox only
    with pytest.warns(RuntimeWarning, match="broken_image.jpg"):
        batches = list(ds.as_tf_dataset().as_numpy_iterator())
    assert sum(len(x) for x, _ in batches) == 6  # the epoch kept its length
    with pytest.warns(RuntimeWarning, match="broken_image.jpg"):  # the mosaic path too
        aug = TrainDataset(records, C, (96, 128), batch_size=6, seed=0)
        aug.set_special(True)
        x, _ = aug[0]
    assert x.shape[0] == 6
    loader = RecordLoader([records[3]])
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="could not be read"):
        loader.load(0, np.random.default_rng(0))


def test_difficult_boxes_excluded_from_targets(tmp_path):
    records = make_records(tmp_path, n=1)
    r = records[0]
    r.boxes = np.array([[5, 5, 40, 40], [20, 10, 60, 50]], np.float32)
    r.labels = np.array([0, 1], np.int32)
    r.difficult = np.array([False, True])
    ds = TrainDataset(records, C, (96, 128), batch_size=1, augment=False)
    _, y = ds[0]
    assert int((y["gt_boxes"][0].sum(-1) > 0).sum()) == 1
    assert sum(y[k][..., 5 + 1].sum() for k in ("y32", "y16", "y8")) == 0  # class 1 box absent
    from utils.data.augment import AugmentConfig
    ds = TrainDataset(records, C, (96, 128), batch_size=1, augment=AugmentConfig(include_difficult=True))
    boxes, labels = ds.loader.boxes_labels(0)
    assert labels.tolist() == [0, 1]


def test_val_dataset_letterboxes_in_order(tmp_path):
    records = make_records(tmp_path, n=5)
    val = ValDataset(records, input_hw=(96, 128), batch_size=2)
    assert len(val) == 3
    (images,) = val[2]
    assert images.shape == (1, 96, 128, 3) and images.dtype == np.float32
    want, lb = letterbox_image(cv2.imread(records[4].image_path)[:, :, ::-1], (96, 128))
    np.testing.assert_array_equal(images[0], want.astype(np.float32))
    assert val.letterboxes()[4] == lb
    val = ValDataset(records, num_classes=C, input_hw=(96, 128), batch_size=2, with_targets=True)
    x, y = val[0]
    check_batch(x, y, 2)


def test_epoch_setter_drives_the_pipeline_in_fit(tmp_path):
    import keras
    import tensorflow as tf
    records = make_records(tmp_path, n=4)
    ds = TrainDataset(records, C, (32, 32), batch_size=2, augment=False)
    seen = []
    example = ds.example

    def logged(position):
        seen.append(ds.epoch)
        return example(position)

    ds.example = logged
    data = ds.as_tf_dataset().map(lambda x, y: (x, tf.reduce_sum(y["gt_boxes"], axis=[1, 2])))
    inp = keras.Input((32, 32, 3), name="image")
    out = keras.layers.Dense(1, name="out")(keras.layers.GlobalAveragePooling2D(name="pool")(inp))
    model = keras.Model(inp, out)
    model.compile("sgd", "mse")
    model.fit(data, epochs=3, verbose=0, shuffle=False, callbacks=[EpochSetter(ds, 3)])
    assert seen == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.augmenter.total_epochs == 3


def test_input_pipelines_split_each_global_batch_and_read_each_sample_once(tmp_path, monkeypatch):
    """Two pipelines (two workers) with replica batches of 2 from global batches of 4: pipeline
    p holds positions [4k + 2p, 4k + 2p + 2) of batch k, exactly what one pipeline in replica
    batches of 2 hands to replica p; every sample is read once, the partial last batch by none."""
    records = make_records(tmp_path, n=10)
    ds = TrainDataset(records, C, (64, 64), batch_size=4, seed=2, augment=False, drop_remainder=True)
    ds.set_epoch(1, 3)
    read = []
    example = ds.example
    monkeypatch.setattr(ds, "example", lambda i: (read.append(i), example(i))[1])
    whole = [x for x, _ in ds.as_tf_dataset().as_numpy_iterator()]
    one = [x for x, _ in ds.as_tf_dataset(replica_batch=2).as_numpy_iterator()]  # 2 local replicas
    read.clear()
    parts = [[x for x, _ in ds.as_tf_dataset(shard=(p, 2), replica_batch=2).as_numpy_iterator()] for p in (0, 1)]
    assert sorted(read) == list(range(8))  # positions 8, 9 (a partial global batch) are read by no pipeline
    assert len(whole) == 2 and [len(p) for p in parts] == [2, 2]
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), whole[k])
        np.testing.assert_array_equal(one[2 * k], parts[0][k])
        np.testing.assert_array_equal(one[2 * k + 1], parts[1][k])
    with pytest.raises(ValueError, match="a batch of 4 does not split into 3 input pipelines"):
        ds.as_tf_dataset(shard=(0, 3), replica_batch=1)
