import numpy as np
import pytest

from tasks import labels


def test_train_id_table_comes_from_cityscapesscripts():
    assert labels.TRAIN_ID_NAMES[0] == "road" and labels.TRAIN_ID_NAMES[18] == "bicycle"
    assert len(labels.TRAIN_ID_NAMES) == 19
    ids = np.array([[7, 8, 23, 26], [0, 1, 34, 33]], np.uint8)  # road, sidewalk, sky, car / unlabeled, ego, ?, bicycle
    tr = labels.label_ids_to_train_ids(ids)
    assert tr.tolist() == [[0, 1, 10, 13], [255, 255, 255, 18]]


def test_unknown_class_names_are_named_in_the_error():
    with pytest.raises(KeyError, match="unknown Cityscapes train class 'dog'"):
        labels.train_id("dog")


def test_eval_label_mapping():
    shard = np.array([0, 13, 254, 255, 18], np.uint8)
    assert labels.to_eval_labels(shard).tolist() == [0, 0, 1, 255, 0]


def test_anomaly_and_void_are_valid_shard_values_and_nothing_else_above_18():
    assert {254, 255} <= labels.SHARD_LABEL_VALUES
    assert 19 not in labels.SHARD_LABEL_VALUES and 253 not in labels.SHARD_LABEL_VALUES
