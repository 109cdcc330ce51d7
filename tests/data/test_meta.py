"""MetaDataset: equal to RETURNN's MetaDataset (order, tags, data) on a feature HDF + an alignment HDF."""

from __future__ import annotations

import json

import numpy as np
import pytest

from returnn_ray.data import DataSpec, MetaDataset, init_dataset, write_hdf
from returnn_ray.errors import ConfigError, DataError

NUM = 11


@pytest.fixture
def corpus(tmp_path):
    """A feature HDF (``data`` [T, 2]) and an alignment HDF (sparse ``data`` [T]) holding the same seqs
    in another order, plus one extra seq only the alignments have."""
    rng = np.random.RandomState(0)
    lens = rng.randint(1, 6, size=NUM)  # many ties: the sort's stability matters
    tags = [f"corpus/rec{i}/1" for i in range(NUM)]
    feats = [rng.randn(t, 2).astype("float32") for t in lens]
    aligns = [rng.randint(0, 4, size=t).astype("int32") for t in lens]
    feat = str(tmp_path / "feat.hdf")
    write_hdf(feat, [{"data": f} for f in feats], tags, {"data": DataSpec(2)})
    perm = list(rng.permutation(NUM)) + [NUM]
    extra = {"data": np.zeros(2, "int32")}
    align = str(tmp_path / "align.hdf")
    seqs = [{"data": aligns[i]} if i < NUM else extra for i in perm]
    write_hdf(align, seqs, [tags[i] if i < NUM else "extra" for i in perm], {"data": DataSpec(4, sparse=True, dtype="int32")})
    return feat, align


def meta_dict(feat, align, control=None, sub_order=None, **kwargs):
    feat_ds = {"class": "HDFDataset", "files": [feat], **(sub_order or {})}
    return {
        "class": "MetaDataset",
        "datasets": {"feat": feat_ds, "align": {"class": "HDFDataset", "files": [align]}},
        "data_map": {"data": ("feat", "data"), "classes": ("align", "data")},
        **({"seq_order_control_dataset": control} if control else {}),
        **kwargs,
    }


def returnn_epoch(spec, epoch):
    """RETURNN's MetaDataset: tags and data of an epoch, in its order."""
    basic = pytest.importorskip("returnn.datasets.basic")
    ds = basic.init_dataset(dict(spec))
    ds.init_seq_order(epoch=epoch)
    ds.load_seqs(0, ds.num_seqs)
    tags = [ds.get_tag(i) for i in range(ds.num_seqs)]
    return tags, [{k: ds.get_data(i, k) for k in ds.get_data_keys()} for i in range(ds.num_seqs)]


CASES = [
    # (control, sub-dataset order options, MetaDataset order options)
    ("feat", {}, {}),
    ("feat", {"seq_ordering": "sorted"}, {"seq_ordering": "random"}),  # the control's order wins
    ("feat", {"seq_ordering": "laplace:.3", "partition_epoch": 2}, {}),
    ("feat", {"seq_ordering": "random", "random_seed_offset": 3}, {}),
    (None, {}, {"seq_ordering": "sorted"}),
    (None, {}, {"seq_ordering": "sort_bin_shuffle:.2", "partition_epoch": 3}),
    (None, {"seq_ordering": "random"}, {"seq_ordering": "default"}),  # no control: the sub's order is unused
]


@pytest.mark.parametrize("control, sub_order, meta_order", CASES)
def test_meta_equals_returnn(corpus, control, sub_order, meta_order):
    spec = meta_dict(*corpus, control=control, sub_order=sub_order, **meta_order)
    ours = init_dataset(spec, name="train")
    assert isinstance(ours, MetaDataset)
    assert ours.specs == {"data": DataSpec(2), "classes": DataSpec(4, sparse=True, dtype="int32")}
    for epoch in (1, 2, 3, 4):
        tags, seqs = returnn_epoch(spec, epoch)
        order = ours.seq_order_for_epoch(epoch)
        assert [ours.seq_tags[i] for i in order] == tags, epoch
        for got, want in zip(ours.get_seqs(order.tolist()), seqs):
            assert sorted(got) == sorted(want)
            for key in want:
                assert got[key].dtype == want[key].dtype
                np.testing.assert_array_equal(got[key], want[key])
        for key in ("data", "classes"):
            assert ours.seq_lens[key][order].tolist() == [len(s[key]) for s in seqs]
    parts = ours.order.partition_epoch
    assert [o.tolist() for o in ours.sub_epoch_orders(2)] == [
        ours.seq_order_for_epoch(e).tolist() for e in range(parts + 1, 2 * parts + 1)
    ]


def test_meta_seq_list_file_and_seq_lens_file_equal_returnn(corpus, tmp_path):
    feat, align = corpus
    ours_tags = init_dataset(meta_dict(feat, align), name="x").seq_tags
    listed = ours_tags[::-1][:7]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    fake = {tag: {"data": (i * 7) % 5} for i, tag in enumerate(listed)}  # not the real lengths: RETURNN sorts by these
    (tmp_path / "lens.json").write_text(json.dumps(fake))
    spec = meta_dict(feat, align, seq_list_file=str(tmp_path / "list.txt"), seq_lens_file=str(tmp_path / "lens.json"),
                     seq_ordering="sorted")
    ours = init_dataset(spec, name="train")
    tags, seqs = returnn_epoch(spec, 1)
    order = ours.seq_order_for_epoch(1)
    assert [ours.seq_tags[i] for i in order] == tags
    for got, want in zip(ours.get_seqs(order.tolist()), seqs):
        np.testing.assert_array_equal(got["classes"], want["classes"])


def test_meta_missing_tag_is_one_line(corpus, tmp_path):
    feat, align = corpus
    # feat as alignment source: the alignment HDF's extra seq has no features
    spec = meta_dict(align, feat)
    spec["data_map"] = {"data": ("feat", "data"), "classes": ("align", "data")}
    with pytest.raises(DataError, match=r"sub-dataset 'align' has no seq with tag 'extra' \(1 of the 12"):
        init_dataset(spec, name="train")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"data_map": {"data": ("nope", "data")}}, r"data_map\['data'\] names sub-dataset 'nope'"),
        ({"data_map": {"classes": ("align", "data")}}, "needs seq_order_control_dataset or a 'data' entry"),
        ({"data_map": {"data": "feat"}}, r"data_map\['data'\] must be \(sub-dataset name, its data key\)"),
        ({"seq_order_control_dataset": "other"}, "seq_order_control_dataset 'other' is not in datasets"),
        ({"data_dims": {"classes": (5, 1)}}, r"data_dims\['classes'\] = \(5, 1\) but the sub-dataset holds dim 4"),
    ],
)
def test_meta_config_errors(corpus, change, match):
    spec = {**meta_dict(*corpus), **change}
    with pytest.raises(ConfigError, match=match):
        init_dataset(spec, name="train")


def test_meta_missing_sub_key_is_one_line(corpus):
    spec = meta_dict(*corpus)
    spec["data_map"] = {"data": ("feat", "data"), "classes": ("align", "classes")}
    with pytest.raises(DataError, match="sub-dataset 'align' has no data key 'classes'"):
        init_dataset(spec, name="train")
